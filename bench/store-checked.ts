/**
 * The receiver's per-chunk check-and-store work alone (issue 16): SIZE GiB of unique 1 MiB chunks
 * written through the store the two ways the receiver can take, alternating in one process so both
 * see the same load (CPU seconds of this process per GiB, not MB/s, compare on a shared machine):
 *   hop      the tree digest checked off the event loop (as the codec pool does), then writeExtent
 *            with the checked digest (refs.log line, header and data writes: more thread hops);
 *   checked  writeExtent({ sha256, check: true }): check, refs.log line and pack append in one
 *            native call (docs/store.md, "Checked appends").
 * 8 writes in flight, a flush every 32 MiB, as the receiver does.
 *
 *   node --import tsx bench/store-checked.ts [--size-gib 1] [--rounds 3] [--dir DIR]
 */
import { randomFillSync } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openImageStore } from '../src/store/index.ts';
import { nativeDigest } from '../src/util/native-digest.ts';
import { treeDigest } from '../src/util/tree-digest.ts';

const { values } = parseArgs({ options: { 'size-gib': { type: 'string', default: '1' }, rounds: { type: 'string', default: '3' }, dir: { type: 'string' } } });
const MiB = 1 << 20;
const chunks = Math.round(Number(values['size-gib']) * 1024);
const native = nativeDigest();
if (!native) throw new Error('the native digest library is not built: bash native/build.sh');

// 64 random 1 MiB buffers; chunk i is buffer i % 64 with i written into its first bytes (unique content)
const bufs = Array.from({ length: 64 }, () => randomFillSync(Buffer.allocUnsafe(MiB)));
const digests = new Map<number, Buffer>();
function chunk(i: number): { data: Buffer; digest: Buffer } {
  const data = bufs[i % 64]!;
  data.writeUInt32BE(i, 0);
  let d = digests.get(i);
  if (!d) { d = treeDigest(data); digests.set(i, d); }
  return { data, digest: d };
}
for (let i = 0; i < chunks; i++) chunk(i); // digests computed before any clock starts

const work = await mkdtemp(join(values.dir ?? tmpdir(), 'vmlift-bench-checked-'));
try {
  const rows: { mode: string; cpuPerGiB: number; wall: number }[] = [];
  for (let round = 0; round < Number(values.rounds) * 2; round++) {
    const mode = round % 2 === 0 ? 'hop' : 'checked';
    const root = join(work, `store-${round}`);
    const store = await openImageStore(root);
    const w = await store.beginCycle({ sourceId: 'bench', cycleId: 'c1', disks: [{ disk: 0, capacity: chunks * MiB }] });
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    let next = 0;
    let unflushed = 0;
    let flushing: Promise<void> = Promise.resolve();
    // one buffer per chunk in flight: a buffer is reused only after its write settled (i % 64, 8 in flight)
    await Promise.all(Array.from({ length: 8 }, async () => {
      while (next < chunks) {
        const i = next++;
        const { data, digest } = chunk(i);
        data.writeUInt32BE(i, 0);
        if (mode === 'hop') {
          const d = await native.tree(data);
          if (!d.equals(digest)) throw new Error('digest mismatch');
          await w.writeExtent(0, i * MiB, MiB, data, { sha256: digest });
        } else {
          await w.writeExtent(0, i * MiB, MiB, data, { sha256: digest, check: true });
        }
        unflushed += MiB;
        if (unflushed >= 32 * MiB) { unflushed = 0; await flushing; flushing = w.flush(); }
      }
    }));
    await flushing;
    await w.flush();
    const cpu = process.cpuUsage(c0);
    const wall = (performance.now() - t0) / 1000;
    await w.abort();
    await store.close();
    await rm(root, { recursive: true, force: true });
    const row = { mode, cpuPerGiB: (cpu.user + cpu.system) / 1e6 / (chunks / 1024), wall };
    rows.push(row);
    process.stderr.write(`round ${round} ${mode}: ${row.cpuPerGiB.toFixed(3)} CPU s/GiB, ${(chunks / wall).toFixed(0)} MiB/s, load ${loadavg()[0]!.toFixed(2)}\n`);
  }
  for (const mode of ['hop', 'checked']) {
    const mine = rows.filter((r) => r.mode === mode).map((r) => r.cpuPerGiB);
    process.stdout.write(`${JSON.stringify({ mode, sizeGiB: chunks / 1024, rounds: mine.length, cpuPerGiB: mine.reduce((a, b) => a + b, 0) / mine.length, min: Math.min(...mine), max: Math.max(...mine), load: loadavg() })}\n`);
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
