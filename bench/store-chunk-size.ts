/**
 * Image store chunk-size benchmark: for each chunk size, a full cycle of a fully allocated disk
 * (unique random data) and an incremental cycle after 1 % scattered 4 KiB writes; prints MB/s,
 * chunk files, index size, bytes rewritten by the incremental cycle (write amplification), and,
 * as peers, `nbdcopy --flush` of the same data from a raw file into a raw file in the same folder,
 * and (per row) the same bytes written once into one file by this process (`plain`).
 * CPU seconds count all threads of the process; on a busy machine they are steadier than MB/s.
 *
 *   node --import tsx bench/store-chunk-size.ts [--size-mib 2048] [--sizes 64,256,1024,4096] [--dir /var/tmp] [--json]
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir, rm, stat } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openImageStore } from '../src/store/index.ts';

const { values } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '2048' },
    sizes: { type: 'string', default: '64,256,1024,4096' },
    dir: { type: 'string', default: tmpdir() },
    json: { type: 'boolean', default: false },
  },
});
const capacity = Number(values['size-mib']) * 2 ** 20;
const sizesKiB = values.sizes!.split(',').map(Number);
const base = await mkdtemp(join(values.dir!, 'vmlift-bench-store-'));
// Leave no multi-GiB temp folder behind when a run fails.
process.once('uncaughtException', (e) => { rmSync(base, { recursive: true, force: true }); console.error(e); process.exit(1); });
process.once('unhandledRejection', (e) => { rmSync(base, { recursive: true, force: true }); console.error(e); process.exit(1); });

// Unique content for every 4 KiB block: a random pool with the block number stamped in.
const pool = randomBytes(64 << 20);
function fill(buf: Buffer, offset: number): void {
  for (let p = 0; p < buf.length; p += pool.length) pool.copy(buf, p, 0, Math.min(pool.length, buf.length - p));
  for (let b = 0; b < buf.length; b += 4096) buf.writeDoubleLE(offset + b, b);
}

async function countFiles(dir: string): Promise<{ files: number; bytes: number }> {
  let files = 0; let bytes = 0;
  for (const sub of await readdir(dir)) {
    for (const n of await readdir(join(dir, sub))) {
      if (n.length !== 64) continue;
      files++;
      bytes += (await stat(join(dir, sub, n))).size;
    }
  }
  return { files, bytes };
}

function writerPool(depth: number) {
  const running = new Set<Promise<void>>();
  return {
    async add(p: Promise<void>) {
      const t = p.finally(() => running.delete(t));
      running.add(t);
      if (running.size >= depth) await Promise.race(running);
    },
    async drain() { await Promise.all(running); },
  };
}

const FLUSH_EVERY = 256 << 20;
const changes: number[] = [];
{
  const blocks = capacity / 4096;
  const want = Math.round(blocks * 0.01);
  const set = new Set<number>();
  while (set.size < want) set.add(Math.floor(Math.random() * blocks));
  changes.push(...[...set].sort((a, b) => a - b).map((b) => b * 4096));
}

// Peer: nbdcopy of the same bytes, raw file to raw file (with --flush so it is durable like a commit).
const srcFile = join(base, 'source.raw');
{
  const fh = await open(srcFile, 'w');
  const buf = Buffer.alloc(16 << 20);
  for (let o = 0; o < capacity; o += buf.length) { fill(buf, o); await fh.write(buf, 0, buf.length, o); }
  await fh.sync(); await fh.close();
}
let nbdcopyMBs: number | null = null;
let nbdcopyCpuS: number | null = null;
{
  const t0 = performance.now();
  const r = spawnSync('/usr/bin/time', ['-f', '%U %S', 'nbdcopy', '--flush', srcFile, join(base, 'copy.raw')], { encoding: 'utf8' });
  if (r.status === 0) {
    nbdcopyMBs = capacity / 1e6 / ((performance.now() - t0) / 1000);
    const [u, sy] = r.stderr.trim().split('\n').pop()!.split(' ').map(Number);
    nbdcopyCpuS = (u ?? 0) + (sy ?? 0);
  } else {
    console.error(`nbdcopy failed: ${r.error?.message ?? r.stderr}`);
  }
  await rm(join(base, 'copy.raw'), { force: true });
}
await rm(srcFile, { force: true });

const results = [];
for (const kib of sizesKiB) {
  const cs = kib << 10;
  for (const given of [true, false]) {
    // Peer in this process: the same bytes written once into one file, fsynced (what a store cannot beat).
    const plainFile = join(base, 'plain.raw');
    const pc0 = process.cpuUsage();
    const pt0 = performance.now();
    {
      const fh = await open(plainFile, 'w');
      const q0 = writerPool(8);
      for (let o = 0; o < capacity; o += 1 << 20) {
        const buf = Buffer.allocUnsafe(1 << 20);
        fill(buf, o);
        await q0.add(fh.write(buf, 0, buf.length, o).then(() => {}));
      }
      await q0.drain();
      await fh.sync(); await fh.close();
    }
    const plainS = (performance.now() - pt0) / 1000;
    const pcpu = process.cpuUsage(pc0);
    await rm(plainFile, { force: true });

    const root = join(base, `store-${kib}-${given}`);
    const store = await openImageStore(root, { chunkSize: cs });
    const cpu0 = process.cpuUsage();
    const extent = Math.max(cs, 1 << 20);
    let t0 = performance.now();
    let w = await store.beginCycle({ sourceId: 'bench', cycleId: 'full', disks: [{ disk: 0, capacity }] });
    const q = writerPool(8);
    for (let o = 0; o < capacity; o += extent) {
      const buf = Buffer.allocUnsafe(extent);
      fill(buf, o);
      for (let c = 0; c < extent; c += cs) {
        const data = buf.subarray(c, c + cs);
        await q.add(w.writeExtent(0, o + c, cs, data, given ? { sha256: createHash('sha256').update(data).digest() } : undefined));
      }
      if ((o + extent) % FLUSH_EVERY === 0) { await q.drain(); await w.flush(); }
    }
    await q.drain();
    await w.commit();
    const fullS = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const files = await countFiles(join(root, 'packs'));
    const indexBytes = Math.ceil(capacity / cs) * 32;

    // Incremental: 1 % of the 4 KiB blocks, at random offsets.
    let incS = 0; let incFiles = 0; let incBytes = 0;
    if (given) {
      t0 = performance.now();
      w = await store.beginCycle({ sourceId: 'bench', cycleId: 'inc', disks: [{ disk: 0, capacity }] });
      const q2 = writerPool(8);
      for (const off of changes) await q2.add(w.writeExtent(0, off, 4096, randomBytes(4096)));
      await q2.drain();
      await w.commit();
      incS = (performance.now() - t0) / 1000;
      const after = await countFiles(join(root, 'packs'));
      incFiles = after.files - files.files;
      incBytes = after.bytes - files.bytes;
    }
    await store.close();
    await rm(root, { recursive: true, force: true });
    const r = {
      chunkKiB: kib, digestGiven: given,
      fullMBs: Math.round(capacity / 1e6 / fullS), fullCpuS: Number(((cpu.user + cpu.system) / 1e6).toFixed(1)),
      chunkFiles: files.files, indexKiBPer8GiB: (indexBytes * (8 * 1024 ** 3 / capacity)) / 1024,
      ...(given ? {
        incSeconds: Number(incS.toFixed(2)), incChangedMiB: Number((changes.length * 4096 / 2 ** 20).toFixed(1)),
        incNewChunkFiles: incFiles, incWrittenMiB: Number((incBytes / 2 ** 20).toFixed(1)),
        writeAmplification: Number((incBytes / (changes.length * 4096)).toFixed(1)),
        incOfFull: Number((incS / fullS).toFixed(3)),
      } : {}),
      ratioVsNbdcopy: nbdcopyMBs ? Number((capacity / 1e6 / fullS / nbdcopyMBs).toFixed(2)) : null,
      plainMBs: Math.round(capacity / 1e6 / plainS), plainCpuS: Number(((pcpu.user + pcpu.system) / 1e6).toFixed(1)),
      ratioVsPlain: Number((plainS / fullS).toFixed(2)),
    };
    results.push(r);
    if (!values.json) console.error(JSON.stringify(r));
  }
}
await rm(base, { recursive: true, force: true });
const out = { capacityMiB: capacity / 2 ** 20, nbdcopyMBs: nbdcopyMBs && Math.round(nbdcopyMBs), nbdcopyCpuS, peakRssMiB: Math.round(process.resourceUsage().maxRSS / 1024), results };
if (values.json) console.log(JSON.stringify(out, null, 2));
else {
  console.log(`disk ${out.capacityMiB} MiB, nbdcopy --flush file->file ${out.nbdcopyMBs} MB/s (${out.nbdcopyCpuS} CPU s), peak RSS ${out.peakRssMiB} MiB, load ${loadavg()[0]!.toFixed(1)}`);
  console.table(results);
}
