import { createHash, randomBytes, randomInt } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImageStore, type CycleWriter } from '../../src/store/index.ts';

export const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export async function tempDir(t: { after: (fn: () => Promise<void>) => void }, name = 'store'): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), `vmlift-test-${name}-`));
  t.after(() => rm(d, { recursive: true, force: true }));
  return d;
}

/** A disk image in memory: random data in random runs, holes in between. */
export function randomDisk(capacity: number, dataFraction = 0.5): Buffer {
  const b = Buffer.alloc(capacity);
  let pos = 0;
  while (pos < capacity) {
    const run = Math.min(capacity - pos, 512 * randomInt(1, 600));
    if (Math.random() < dataFraction) randomBytes(run).copy(b, pos);
    pos += run;
  }
  return b;
}

/** Send the whole buffer as extents of `extent` bytes (zero extents as null), `depth` in flight. */
export async function writeAll(w: CycleWriter, disk: number, buf: Buffer, extent: number, depth = 6): Promise<void> {
  const running = new Set<Promise<void>>();
  for (let o = 0; o < buf.length; o += extent) {
    const len = Math.min(extent, buf.length - o);
    const part = buf.subarray(o, o + len);
    const isZero = part.every((x) => x === 0);
    const p: Promise<void> = w.writeExtent(disk, o, len, isZero ? null : part).finally(() => running.delete(p));
    running.add(p);
    if (running.size >= depth) await Promise.race(running);
  }
  await Promise.all(running);
}

/** Change `count` random 4 KiB blocks of `buf` in place; returns their offsets. */
export function scatter(buf: Buffer, count: number): number[] {
  const offs = new Set<number>();
  while (offs.size < count) offs.add(randomInt(0, buf.length / 4096) * 4096);
  const list = [...offs].sort((a, b) => a - b);
  for (const o of list) randomBytes(4096).copy(buf, o);
  return list;
}

export async function chunkFiles(root: string): Promise<Set<string>> {
  const out = new Set<string>();
  for (const d of await readdir(join(root, 'chunks'))) {
    for (const n of await readdir(join(root, 'chunks', d))) if (/^[0-9a-f]{64}$/.test(n)) out.add(n);
  }
  return out;
}

/** A new store (chunk size `chunkSize`) whose source "vm" has image 1: one disk of random data. */
export async function storeWithImage(t: Parameters<typeof tempDir>[0], o: { chunkSize: number; capacity: number; name?: string }) {
  const dir = await tempDir(t, o.name);
  const root = join(dir, 'store');
  const store = await openImageStore(root, { chunkSize: o.chunkSize });
  const v1 = randomBytes(o.capacity);
  const w1 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: o.capacity }] });
  await writeAll(w1, 0, v1, o.chunkSize);
  await w1.commit();
  return { dir, root, store, v1 };
}
