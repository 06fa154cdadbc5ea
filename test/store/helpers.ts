import { spawn } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { mkdtemp, open, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImageStore, type CycleWriter } from '../../src/store/index.ts';
import { decodeIndex, encodeIndex, type PackEntry } from '../../src/store/packs.ts';

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

/** The chunks the store holds: every name in a sealed pack's index (src/store/packs.ts). */
export async function chunkFiles(root: string): Promise<Set<string>> {
  const out = new Set<string>();
  for (const [, entries] of await packIndexes(root)) for (const e of entries) out.add(e.hex);
  return out;
}

/** Every sealed pack of the store: id -> its index entries. */
export async function packIndexes(root: string): Promise<Map<string, PackEntry[]>> {
  const out = new Map<string, PackEntry[]>();
  for (const n of await readdir(join(root, 'packs'))) {
    if (!n.endsWith('.idx')) continue;
    const entries = decodeIndex(await readFile(join(root, 'packs', n)));
    assert.ok(entries, `pack index ${n} is damaged`);
    out.set(n.slice(0, -4), entries);
  }
  return out;
}

/** Where chunk `hex` is stored: its pack file, the offset of its bytes and their length. */
export async function chunkLocation(root: string, hex: string): Promise<{ path: string; offset: number; length: number }> {
  for (const [id, entries] of await packIndexes(root)) {
    const e = entries.find((x) => x.hex === hex);
    if (e) return { path: join(root, 'packs', `${id}.pack`), offset: e.offset, length: e.length };
  }
  throw new Error(`chunk ${hex} is in no pack`);
}

/** Set the mtime of every pack (gc spares packs touched within its grace). */
export async function agePacks(root: string, when: Date): Promise<void> {
  for (const n of await readdir(join(root, 'packs'))) if (n.endsWith('.pack')) await utimes(join(root, 'packs', n), when, when);
}

/** Flip the bits of byte `at` of chunk `hex` where it is stored. */
export async function corruptChunk(root: string, hex: string, at = 0): Promise<void> {
  const loc = await chunkLocation(root, hex);
  const fh = await open(loc.path, 'r+');
  try {
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, loc.offset + at);
    b[0] = b[0]! ^ 0xff;
    await fh.write(b, 0, 1, loc.offset + at);
  } finally { await fh.close(); }
}

/** Remove chunk `hex` from the index of the pack holding it, as if it had never been stored (a store opened after sees it missing). */
export async function loseChunk(root: string, hex: string): Promise<void> {
  for (const [id, entries] of await packIndexes(root)) {
    if (!entries.some((e) => e.hex === hex)) continue;
    await writeFile(join(root, 'packs', `${id}.idx`), encodeIndex(entries.filter((e) => e.hex !== hex)));
  }
}

/** Files in the packs folder (packs, indexes, temp files). */
export async function packFiles(root: string): Promise<string[]> {
  return (await readdir(join(root, 'packs'))).sort();
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

/** Runs `cmd args` to its end (from sources), with its output, exit code and signal. */
export function run(cmd: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; signal: string | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMLIFT_FROM_SOURCE: '1', ...env } });
    let out = ''; let err = '';
    p.stdout.on('data', (d: Buffer) => { out += d; });
    p.stderr.on('data', (d: Buffer) => { err += d; });
    p.on('error', reject);
    p.on('close', (code, signal) => resolve({ code, signal, out, err }));
  });
}

/** Files of the packs folder that only a crash leaves: packs set aside, index temp files, packs without an index. */
export async function leftovers(root: string): Promise<string[]> {
  const files = await packFiles(root);
  const set = new Set(files);
  return files.filter((n) => n.startsWith('.gc-') || n.endsWith('.tmp') || (n.endsWith('.pack') && !set.has(n.replace(/\.pack$/, '.idx'))));
}
