/**
 * Store-only cycle benchmark (issue 16, packs): the receiver's store work without the network or
 * the sender, so that one tree's store can be compared with another's in the same run.
 *
 *   node --import tsx bench/store-cycles.ts [--size-gib 1] [--dir DIR]
 *
 * 1. A full cycle of SIZE GiB of unique random data in 1 MiB extents with the sender's digest (as
 *    the receiver passes its checked wire digest), 8 in flight, a flush every 32 MiB.
 * 2. An incremental cycle of 1 % of the 4 KiB blocks at random offsets (sorted, as CBT reports them),
 *    16 in flight, a flush every 1024 writes.
 * Per cycle: wall s, CPU s of this process (user + system, the data generated before the clock
 * starts), files created in the store, and the peak RSS of the process. Prints JSON.
 */
import { createHash, randomFillSync, randomInt } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openImageStore, type CycleWriter } from '../src/store/index.ts';

const { values } = parseArgs({ options: { 'size-gib': { type: 'string', default: '1' }, dir: { type: 'string' } } });
const MiB = 1 << 20;
const size = Math.round(Number(values['size-gib']) * 1024) * MiB;

async function countFiles(dir: string): Promise<number> {
  let n = 0;
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) n += e.isDirectory() ? await countFiles(join(dir, e.name)) : 1;
  return n;
}

/** Run `fn` with at most `depth` calls in flight. */
async function pool(count: number, depth: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: depth }, async () => { while (next < count) await fn(next++); }));
}

const work = await mkdtemp(join(values.dir ?? tmpdir(), 'vmlift-bench-store-'));
try {
  const root = join(work, 'store');
  const store = await openImageStore(root);
  const data = randomFillSync(Buffer.alloc(size));
  const digests = Array.from({ length: size / MiB }, (_, i) => createHash('sha256').update(data.subarray(i * MiB, (i + 1) * MiB)).digest());
  const blocks = size / 4096;
  const offs = new Set<number>();
  while (offs.size < blocks / 100) offs.add(randomInt(0, blocks) * 4096);
  const changes = [...offs].sort((a, b) => a - b);
  const patch = randomFillSync(Buffer.alloc(changes.length * 4096));

  const measure = async (name: string, body: (w: CycleWriter) => Promise<void>) => {
    const files0 = await countFiles(root);
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const w = await store.beginCycle({ sourceId: 'bench', cycleId: name, disks: [{ disk: 0, capacity: size }] });
    await body(w);
    await w.commit();
    const wall = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    return { wall, cpu: (cpu.user + cpu.system) / 1e6, filesCreated: (await countFiles(root)) - files0, peakRssMiB: process.resourceUsage().maxRSS / 1024 };
  };
  const full = await measure('full', async (w) => {
    let sinceFlush = 0;
    await pool(size / MiB, 8, async (i) => {
      await w.writeExtent(0, i * MiB, MiB, data.subarray(i * MiB, (i + 1) * MiB), { sha256: digests[i] });
      if ((sinceFlush += MiB) >= 32 * MiB) { sinceFlush = 0; await w.flush(); }
    });
  });
  const incremental = await measure('inc', async (w) => {
    let n = 0;
    await pool(changes.length, 16, async (k) => {
      await w.writeExtent(0, changes[k]!, 4096, patch.subarray(k * 4096, (k + 1) * 4096));
      if (++n % 1024 === 0) await w.flush();
    });
  });
  await store.close();
  process.stdout.write(`${JSON.stringify({ sizeBytes: size, changes: changes.length, full: { ...full, cpuPerGiB: full.cpu / (size / 2 ** 30) }, incremental }, null, 1)}\n`);
} finally {
  await rm(work, { recursive: true, force: true });
}
