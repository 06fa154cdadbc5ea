/**
 * The agent's read-and-digest path alone (issue 16): `scanDisk` of a local file in this process
 * against an empty manifest, sending nothing anywhere (the sink releases each window at once), so the
 * CPU seconds measured are the scan's: reads, digests, the window loop, with far less noise than a
 * whole cycle on a loaded machine (no TLS, no receiver).
 *
 *   node --import tsx bench/agent-scan-cpu.ts [--size 1] [--rounds 5] [--src FILE]
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generateDisk } from '../scripts/lib/gen-disk.ts';
import { openLocalSource } from '../src/source/local/index.ts';
import { ManifestReader, ManifestWriter } from '../src/agent/manifest.ts';
import { scanDisk } from '../src/agent/scan.ts';
import { sharedDigestPool } from '../src/agent/digest-pool.ts';
import { warm, log } from './lib/agent-run.ts';

const { values } = parseArgs({ options: { size: { type: 'string', default: '1' }, rounds: { type: 'string', default: '5' }, src: { type: 'string' } } });
const GiB = 2 ** 30;
const work = await mkdtemp(join(tmpdir(), 'vmlift-scancpu-'));
try {
  const src = values.src ?? join(work, 'full.img');
  if (!values.src || !(await stat(src).catch(() => null))) await generateDisk({ path: src, size: Number(values.size) * GiB, dataFraction: 1, textFraction: 0.5, seed: 42 });
  const size = (await stat(src)).size;
  const got: Record<string, number[]> = { scan: [] };
  for (let round = 0; round < Number(values.rounds); round++) {
    const kind = 'scan';
    await warm(src);
    const source = await openLocalSource(src);
    const old = await ManifestReader.open(null, source.capacity);
    const fresh = await ManifestWriter.create(join(work, `m-${round}`));
    const t0 = process.cpuUsage(); const w0 = performance.now();
    await scanDisk({ disk: 0, source, oldManifest: old, newManifest: fresh, digestPool: sharedDigestPool(), sink: { send: async (_d, _o, _b, _l, opts) => { opts?.release?.(); } } });
    const cpu = process.cpuUsage(t0); const wall = (performance.now() - w0) / 1000;
    await fresh.finish(); await old.close(); await source.close();
    const s = (cpu.user + cpu.system) / 1e6 / (size / GiB);
    got[kind]!.push(s);
    log(`round ${round + 1} ${kind}: ${s.toFixed(3)} CPU s/GiB, ${(size / 1e6 / wall).toFixed(0)} MB/s, load ${loadavg()[0]!.toFixed(2)}`);
  }
  for (const [k, xs] of Object.entries(got)) {
    const sorted = [...xs].sort((a, b) => a - b);
    log(`${k}: median ${sorted[Math.floor(sorted.length / 2)]!.toFixed(3)} CPU s/GiB [${sorted[0]!.toFixed(3)}–${sorted[sorted.length - 1]!.toFixed(3)}], ${xs.length} runs`);
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
process.exit(0);
