/**
 * Agent cycle benchmark (issue 2): a real receiver and a real agent as child processes over
 * loopback TLS.
 *
 *   node --import tsx bench/agent-cycle.ts [--size 8] [--sparse-sizes 8,64] [--levels 0,7] [--dir DIR] [--json]
 *
 * `--levels`: the compression levels of the full cycles (the incremental cycle runs after level 7's).
 *
 * 1. Full cycle of a SIZE GiB fully allocated source (half text, half random) at compression 0
 *    and 7: MB/s (10^6 B of source per second), CPU seconds and peak RSS of agent and receiver.
 *    In the same run nbdcopy copies the same file from `nbdkit file` into a local file, before each
 *    full cycle; ratio ours / mean nbdcopy (target at compression 0: >= 0.8; bench/data-plane-floor.ts
 *    shows what the required work allows on this machine).
 * 2. Incremental cycle after a 1% scattered change: wire bytes / changed bytes, wall time as a
 *    fraction of the full cycle.
 * 3. Peak RSS of both sides for sparse sources of each --sparse-sizes GiB (full + incremental
 *    cycle): it must not grow with the disk size (target <= 256 MiB each side).
 * Not part of the test suite.
 */
import { mkdtemp, rm, open, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generateDisk, changeBlocks, randomStream } from '../scripts/lib/gen-disk.ts';
import { Receiver, agentCycle, log, timed, warm, type CycleResult, type Usage } from './lib/agent-run.ts';

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '8' },
    'sparse-sizes': { type: 'string', default: '8,64' },
    levels: { type: 'string', default: '0,7' },
    dir: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const GiB = 2 ** 30;
/** Files under `dir` (the receiver's store: chunk or pack files, indexes, journals). */
async function countFiles(dir: string): Promise<number> {
  let n = 0;
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) n += e.isDirectory() ? await countFiles(join(dir, e.name)) : 1;
  return n;
}
const MiB = 2 ** 20;
const SIZE = Math.round(Number(values.size) * GiB / MiB) * MiB;
const SPARSE = values['sparse-sizes']!.split(',').filter(Boolean).map((s) => Math.round(Number(s) * GiB / MiB) * MiB);
const work = await mkdtemp(join(values.dir ?? tmpdir(), 'vmlift-bench-agent-'));
const results: Record<string, unknown> = { sizeBytes: SIZE, cpus: (await import('node:os')).cpus().length, node: process.version };
try {
  // 1. Full cycles vs nbdcopy
  const src = join(work, 'full.img');
  log(`generating a ${SIZE / GiB} GiB fully allocated source...`);
  await generateDisk({ path: src, size: SIZE, dataFraction: 1, textFraction: 0.5, seed: 42 });
  await warm(src);
  // nbdcopy varies a lot run to run on these VMs (its output file's page-cache pages; docs/agent.md,
  // Measurements): it runs before each full cycle and the ratio is against the mean of its runs
  const nbdRuns: Usage[] = [];
  const runNbdcopy = async (): Promise<void> => {
    const out = join(work, 'nbdcopy.raw');
    await warm(src);
    log('nbdcopy (nbdkit file -> local file)...');
    nbdRuns.push(await timed(['nbdcopy', '--', '[', 'nbdkit', '--exit-with-parent', '-r', 'file', src, ']', out]));
    await rm(out, { force: true });
    log(`  nbdcopy: ${(SIZE / 1e6 / nbdRuns.at(-1)!.wall).toFixed(0)} MB/s`);
  };
  const nbdcopyMean = () => {
    const wall = nbdRuns.reduce((a, r) => a + r.wall, 0) / nbdRuns.length;
    return {
      wall, mbps: SIZE / 1e6 / wall, cpu: nbdRuns.reduce((a, r) => a + r.cpu, 0) / nbdRuns.length,
      maxRssMiB: Math.max(...nbdRuns.map((r) => r.maxRssMiB)), runsMbps: nbdRuns.map((r) => Math.round(SIZE / 1e6 / r.wall)),
    };
  };
  const full: Record<string, CycleResult & { filesCreated: number }> = {};
  let incremental: (CycleResult & { wirePerChanged: number; wallFraction: number; filesCreated: number }) | undefined;
  for (const level of values.levels!.split(',').filter(Boolean).map(Number)) {
    await runNbdcopy();
    const r = new Receiver(join(work, `recv-${level}`));
    await r.start();
    try {
      await warm(src);
      log(`full cycle at compression ${level}...`);
      const filesBefore = await countFiles(join(work, `recv-${level}`, 'store'));
      const c = { ...await agentCycle(r, src, join(work, `state-${level}`), level, SIZE), filesCreated: 0 };
      c.filesCreated = await countFiles(join(work, `recv-${level}`, 'store')) - filesBefore;
      full[level] = c;
      log(`  ${c.mbps.toFixed(0)} MB/s, ratio ${(c.mbps / nbdcopyMean().mbps).toFixed(2)} (nbdcopy so far), wire ${(c.wireBytes / 1e6).toFixed(0)} MB`);
      if (level === 7) {
        const ch = await changeBlocks(src, 0.01, 43);
        await warm(src);
        log('incremental cycle after a 1% scattered change...');
        const filesBefore = await countFiles(join(work, `recv-${level}`, 'store'));
        const i = await agentCycle(r, src, join(work, `state-${level}`), level, SIZE);
        const filesCreated = await countFiles(join(work, `recv-${level}`, 'store')) - filesBefore;
        incremental = { ...i, filesCreated, changedBytes: ch.bytes, wirePerChanged: i.wireBytes / ch.bytes, wallFraction: i.wall / c.wall };
        log(`  wire/changed ${incremental.wirePerChanged.toFixed(3)}, wall ${(incremental.wallFraction * 100).toFixed(0)}% of the full cycle`);
      }
    } finally {
      await r.stop();
      await rm(join(work, `recv-${level}`), { recursive: true, force: true });
    }
  }
  await rm(src, { force: true });
  const nbdcopy = nbdcopyMean();
  results.nbdcopy = nbdcopy;
  results.full = Object.fromEntries(Object.entries(full).map(([k, v]) => [`compression${k}`, { ...v, ratioVsNbdcopy: v.mbps / nbdcopy.mbps }]));
  results.incremental = incremental;

  // 3. Memory with sparse sources of growing size
  const sparse: Record<string, unknown>[] = [];
  for (const size of SPARSE) {
    const path = join(work, `sparse-${size / GiB}.img`);
    const fh = await open(path, 'w');
    const rand = randomStream(size / GiB);
    await fh.truncate(size);
    for (let off = 0; off < size; off += 256 * MiB) await fh.write(rand(MiB), 0, MiB, off); // 1 MiB every 256 MiB
    await fh.close();
    const r = new Receiver(join(work, 'recv-sparse'));
    await r.start();
    try {
      log(`sparse ${size / GiB} GiB: full + incremental cycle...`);
      const c1 = await agentCycle(r, path, join(work, `state-sparse-${size}`), 7, size);
      await changeBlocks(path, 0.0001, 44);
      const c2 = await agentCycle(r, path, join(work, `state-sparse-${size}`), 7, size);
      const row = {
        sizeGiB: size / GiB, fullWall: c1.wall, incrementalWall: c2.wall,
        agentRssMiB: Math.max(c1.agentRssMiB, c2.agentRssMiB), receiverRssMiB: Math.max(c1.receiverRssMiB, c2.receiverRssMiB),
      };
      sparse.push(row);
      log(`  agent ${row.agentRssMiB.toFixed(0)} MiB, receiver ${row.receiverRssMiB.toFixed(0)} MiB peak RSS`);
    } finally {
      await r.stop();
      await rm(join(work, 'recv-sparse'), { recursive: true, force: true });
      await rm(path, { force: true });
    }
  }
  results.sparse = sparse;
} finally {
  await rm(work, { recursive: true, force: true });
}

if (values.json) {
  process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
} else {
  const f = results.full as Record<string, CycleResult & { ratioVsNbdcopy: number; filesCreated: number }>;
  const n = results.nbdcopy as { mbps: number; cpu: number; maxRssMiB: number; wall: number; runsMbps: number[] };
  const row = (name: string, c: CycleResult & { ratioVsNbdcopy: number }): string =>
    `| ${name} | ${c.wall.toFixed(1)} | ${c.mbps.toFixed(0)} | ${c.ratioVsNbdcopy.toFixed(2)} | ${c.agentCpu.toFixed(1)} | ${c.receiverCpu.toFixed(1)} | ${c.agentRssMiB.toFixed(0)} | ${c.receiverRssMiB.toFixed(0)} | ${(c.wireBytes / 1e6).toFixed(0)} |`;
  const inc = results.incremental as (CycleResult & { wirePerChanged: number; wallFraction: number; filesCreated: number }) | undefined;
  process.stdout.write([
    `agent cycle benchmark: ${SIZE / GiB} GiB fully allocated source (half text, half random), loopback TLS, ${results.cpus} CPUs, node ${process.version}`,
    '',
    '| run | wall s | MB/s | ours/nbdcopy | agent CPU s | receiver CPU s | agent RSS MiB | receiver RSS MiB | wire MB |',
    '|---|---|---|---|---|---|---|---|---|',
    `| nbdcopy (nbdkit file → file), mean of ${n.runsMbps.length} runs [${n.runsMbps.join(', ')} MB/s] | ${n.wall.toFixed(1)} | ${n.mbps.toFixed(0)} | 1.00 | ${n.cpu.toFixed(1)} | – | ${n.maxRssMiB.toFixed(0)} | – | – |`,
    ...Object.entries(f).map(([k, c]) => row(`vmlift full, ${k.replace('compression', 'compression ')}`, c)),
    '',
    !inc ? 'no incremental cycle (level 7 not run)' : `incremental after a 1% scattered change (compression 7): changed ${(inc.changedBytes / 1e6).toFixed(1)} MB, wire ${(inc.wireBytes / 1e6).toFixed(1)} MB`
      + ` → wire/changed ${inc.wirePerChanged.toFixed(3)}; wall ${inc.wall.toFixed(1)} s = ${(inc.wallFraction * 100).toFixed(0)}% of the full cycle;`
      + ` agent CPU ${inc.agentCpu.toFixed(1)} s, receiver CPU ${inc.receiverCpu.toFixed(1)} s; store files created: full (compression 7) ${f.compression7?.filesCreated}, incremental ${inc.filesCreated}`,
    '',
    '| sparse source GiB | full cycle s | incremental s | agent peak RSS MiB | receiver peak RSS MiB |',
    '|---|---|---|---|---|',
    ...(results.sparse as { sizeGiB: number; fullWall: number; incrementalWall: number; agentRssMiB: number; receiverRssMiB: number }[])
      .map((s) => `| ${s.sizeGiB} | ${s.fullWall.toFixed(1)} | ${s.incrementalWall.toFixed(1)} | ${s.agentRssMiB.toFixed(0)} | ${s.receiverRssMiB.toFixed(0)} |`),
    '',
  ].join('\n'));
}
