/**
 * gc's merge of small packs (src/store/pack-merge.ts): what it costs, and what it changes for reads.
 * Builds a store whose one image is spread over PACKS small packs of PACK_MIB each (PACKS
 * incremental cycles, each writing PACK_MIB of extents of EXTENT_KIB (1 MiB: whole chunks; 64 KiB: sub-chunks) at random places of the disk, so the
 * image's chunks are scattered over every pack, as after weeks of hourly cycles). Then, per round,
 * alternating in this process on fresh copies of that store:
 *   gc        a gc with merging off (mergeBelow 0): mark and sweep only, the baseline;
 *   gc+merge  a gc with the default threshold: mark, sweep and the merge (pack count, bytes copied);
 *   read      the whole image read through a new store (readImage, 16 MiB requests) from the small
 *             packs and from the merged ones, page cache dropped for the packs before each read.
 * CPU seconds are this process's (all threads); on a shared machine compare those, in the same round.
 *
 *   node --import tsx bench/pack-merge.ts [--packs 100] [--pack-mib 4] [--extent-kib 1024] [--rounds 3] [--dir DIR]
 */
import { randomBytes, randomInt } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { cp, mkdtemp, open, readdir, rm, utimes } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openImageStore } from '../src/store/index.ts';
import { dropFromCache } from '../src/store/native.ts';

const { values } = parseArgs({ options: {
  packs: { type: 'string', default: '100' }, 'pack-mib': { type: 'string', default: '4' },
  rounds: { type: 'string', default: '3' }, dir: { type: 'string' }, 'extent-kib': { type: 'string', default: '1024' },
} });
const MiB = 1 << 20;
const packs = Number(values.packs); const perPack = Number(values['pack-mib']); const rounds = Number(values.rounds);
const capacity = packs * perPack * MiB;
// 1024: whole 1 MiB chunks; 64: 64 KiB sub-chunks (what scattered changes of an incremental cycle store)
const extent = Number(values['extent-kib']) * 1024;
const work = await mkdtemp(join(values.dir ?? tmpdir(), 'vmlift-bench-merge-'));
process.once('SIGINT', () => { void rm(work, { recursive: true, force: true }).then(() => process.exit(130)); });

async function packsOf(root: string): Promise<string[]> {
  return (await readdir(join(root, 'packs'))).filter((n) => n.endsWith('.pack'));
}
async function age(root: string): Promise<void> {
  const then = new Date(Date.now() - 60_000);
  for (const n of await packsOf(root)) await utimes(join(root, 'packs', n), then, then);
}
async function dropCache(root: string): Promise<void> {
  execFileSync('sync');
  for (const n of await packsOf(root)) {
    const fh = await open(join(root, 'packs', n), 'r');
    try { await dropFromCache(fh.fd); } finally { await fh.close(); }
  }
}
function clock() {
  const c = process.cpuUsage(); const t = process.hrtime.bigint();
  return () => ({ cpu: (process.cpuUsage(c).user + process.cpuUsage(c).system) / 1e6, wall: Number(process.hrtime.bigint() - t) / 1e9 });
}

// The store: PACKS cycles, each PACK_MIB whole chunks at places drawn from a shuffle of the disk.
const base = join(work, 'base');
{
  const store = await openImageStore(base);
  const order = Array.from({ length: capacity / extent }, (_, i) => i);
  for (let i = order.length - 1; i > 0; i--) { const j = randomInt(0, i + 1); [order[i], order[j]] = [order[j]!, order[i]!]; }
  const chunk = randomBytes(extent);
  const perCycle = perPack * MiB / extent;
  for (let k = 0; k < packs; k++) {
    const w = await store.beginCycle({ sourceId: 'vm', cycleId: `c${k}`, disks: [{ disk: 0, capacity }] });
    for (const c of order.slice(k * perCycle, (k + 1) * perCycle)) { chunk.writeUInt32BE(c, 0); chunk.writeUInt32BE(k, 4); await w.writeExtent(0, c * extent, extent, chunk); }
    await w.commit();
  }
  await store.close();
  await age(base);
}
const last = String(packs);
console.log(`store: ${(await packsOf(base)).length} packs of ${perPack} MiB in extents of ${extent >> 10} KiB, image ${last} of ${capacity / MiB} MiB over all of them; load ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);

async function readAll(root: string): Promise<{ cpu: number; wall: number }> {
  await dropCache(root);
  const store = await openImageStore(root);
  const stop = clock();
  for (let o = 0; o < capacity; o += 16 * MiB) await store.readImage('vm', last, 0, o, Math.min(16 * MiB, capacity - o));
  const r = stop();
  await store.close();
  return r;
}

for (let r = 1; r <= rounds; r++) {
  const plain = join(work, `plain-${r}`); const merged = join(work, `merged-${r}`);
  await cp(base, plain, { recursive: true, preserveTimestamps: true });
  await cp(base, merged, { recursive: true, preserveTimestamps: true });
  execFileSync('sync');
  const s1 = await openImageStore(plain, { mergeBelow: 0 });
  let stop = clock();
  const g1 = await s1.gc();
  const t1 = stop();
  await s1.close();
  const s2 = await openImageStore(merged);
  stop = clock();
  const g2 = await s2.gc();
  const t2 = stop();
  await s2.close();
  const after = (await packsOf(merged)).length;
  console.log(`round ${r} gc:       ${t1.cpu.toFixed(2)} CPU s, ${t1.wall.toFixed(2)} s; merged ${g1.mergedPacks ?? 0} packs`);
  console.log(`round ${r} gc+merge: ${t2.cpu.toFixed(2)} CPU s, ${t2.wall.toFixed(2)} s; merged ${g2.mergedPacks} packs, ${((g2.mergedBytes ?? 0) / MiB).toFixed(0)} MiB copied `
    + `(${((g2.mergedBytes ?? 0) / MiB / t2.wall).toFixed(0)} MB/s, ${((t2.cpu - t1.cpu) / ((g2.mergedBytes ?? 0) / 2 ** 30)).toFixed(2)} CPU s/GiB over gc), ${packs} -> ${after} packs`);
  for (const [name, root] of (r % 2 ? [['small', plain], ['merged', merged]] : [['merged', merged], ['small', plain]]) as [string, string][]) {
    const x = await readAll(root);
    console.log(`round ${r} read ${name.padEnd(6)}: ${x.cpu.toFixed(2)} CPU s, ${x.wall.toFixed(2)} s, ${(capacity / 1e6 / x.wall).toFixed(0)} MB/s, ${(x.cpu / (capacity / 2 ** 30)).toFixed(2)} CPU s/GiB`);
  }
  await rm(plain, { recursive: true, force: true });
  await rm(merged, { recursive: true, force: true });
}
console.log(`load ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
await rm(work, { recursive: true, force: true });
