import { createReadStream } from 'node:fs';
import { open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir } from '../util/fsync.ts';
import { isValidId } from '../util/ids.ts';
import { SLOT, type Layout } from './layout.ts';
import { overlayDigests, readOverlay } from './overlay.ts';
import { isZeroSlot } from './chunks.ts';
import { pidAlive } from './pins.ts';
import { crashPoint } from '../util/crash.ts';

/**
 * Mark and sweep. The rule that makes it safe against cycles running in other processes:
 *  - a writer appends a chunk's name to its cycle's refs.log *before* it creates or reuses
 *    (touches the mtime of) the chunk file;
 *  - gc notes its start time T0, then marks from every open cycle (working indexes + refs.log),
 *    then from every image (cycles before images, so a cycle committing meanwhile is seen as one or the other);
 *  - it sweeps only unmarked chunks whose mtime is older than T0 − 2 s, and re-checks the mtime after
 *    renaming the file aside (restoring it when a writer touched it in between).
 * So a chunk referenced after the mark read the writer's refs.log was touched after T0 and survives.
 * Unmarked chunks spared by the grace are counted as `deferredChunks`: the store records that a later
 * sweep owes them (see `Store.gc`), so garbage never outlives the grace by more than one pass.
 * Marks are kept as 64-bit prefixes of the digests (memory ~ 8 bytes + Set overhead per live chunk);
 * a prefix collision only keeps some garbage.
 */
export const GRACE_MS = 2000;

export interface GcResult {
  removedChunks: number;
  removedBytes: number;
  /** Unreferenced chunks left because they were touched within the grace: a later sweep removes them. */
  deferredChunks: number;
}

async function names(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return [];
    throw e;
  }
}

async function markIndex(path: string, marks: Set<string>): Promise<void> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  try {
    const buf = Buffer.alloc(SLOT * 32768);
    for (let pos = 0; ;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      for (let k = 0; k + SLOT <= bytesRead; k += SLOT) {
        const slot = buf.subarray(k, k + SLOT);
        if (!isZeroSlot(slot)) marks.add(slot.toString('hex', 0, 8));
      }
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
}

async function markRefs(path: string, marks: Set<string>): Promise<void> {
  const stream = createReadStream(path, { encoding: 'utf8', highWaterMark: 1 << 20 });
  let rest = '';
  try {
    for await (const chunk of stream) {
      const lines = (rest + (chunk as string)).split('\n');
      rest = lines.pop()!;
      for (const l of lines) if (l.length === 64) marks.add(l.slice(0, 16));
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  if (rest.length === 64) marks.add(rest.slice(0, 16));
}

async function markDir(dir: string, marks: Set<string>, withRefs: boolean): Promise<void> {
  for (const n of await names(dir)) {
    if (/^disk-[0-9]+\.idx$/.test(n)) await markIndex(join(dir, n), marks);
    if (/^disk-[0-9]+\.sub$/.test(n)) for (const hex of overlayDigests(await readOverlay(join(dir, n)))) marks.add(hex.slice(0, 16));
  }
  if (withRefs) await markRefs(join(dir, 'refs.log'), marks);
}

export async function collectGarbage(layout: Layout, graceMs = GRACE_MS): Promise<GcResult> {
  const t0 = Date.now();
  const marks = new Set<string>();
  const sources = (await names(layout.sourcesDir)).filter((s) => isValidId(s));
  for (const src of sources) {
    for (const c of await names(layout.cyclesDir(src))) await markDir(join(layout.cyclesDir(src), c), marks, true);
  }
  for (const src of sources) {
    // Committed images, and ones being committed (.tmp-) or removed (.trash-, may be restored);
    // those of dead processes are leftovers of a crash: the cycle folder still holds an unfinished commit.
    for (const i of await names(layout.imagesDir(src))) {
      const m = /^\.(tmp|trash-[0-9]+)-([0-9]+)-/.exec(i);
      if (m && !pidAlive(Number(m[2]))) {
        await rm(join(layout.imagesDir(src), i), { recursive: true, force: true });
        continue;
      }
      await markDir(join(layout.imagesDir(src), i), marks, false);
    }
  }
  const cutoff = t0 - graceMs;
  let removedChunks = 0; let removedBytes = 0; let deferredChunks = 0;
  for (let b = 0; b < 256; b++) {
    const dir = join(layout.chunksDir, b.toString(16).padStart(2, '0'));
    let changed = false;
    for (const n of await names(dir)) {
      const path = join(dir, n);
      if (n.startsWith('.tmp-')) {
        // Temp files of dead writers are garbage (their cycle never named them durably).
        if (!pidAlive(Number(n.split('-')[1]))) { await unlink(path).catch(() => {}); changed = true; }
        continue;
      }
      if (n.startsWith('.gc-')) {
        // Set aside by a gc that died: put it back, the next sweep judges it again.
        const parts = n.split('-');
        if (!pidAlive(Number(parts[1])) && /^[0-9a-f]{64}$/.test(parts[2] ?? '')) { await rename(path, join(dir, parts[2]!)).catch(() => {}); changed = true; }
        continue;
      }
      if (!/^[0-9a-f]{64}$/.test(n) || marks.has(n.slice(0, 16))) continue;
      const st1 = await stat(path).catch(() => null);
      if (!st1) continue;
      if (st1.mtimeMs >= cutoff) { deferredChunks++; continue; }
      const aside = join(dir, `.gc-${process.pid}-${n}`);
      try { await rename(path, aside); } catch { continue; }
      crashPoint('store:gc');
      const st2 = await stat(aside);
      if (st2.mtimeMs >= cutoff) {
        await rename(aside, path);
        await fsyncDir(dir);
        deferredChunks++;
        continue;
      }
      await unlink(aside);
      removedChunks++;
      removedBytes += st2.size;
      changed = true;
    }
    if (changed) await fsyncDir(dir).catch(() => {});
  }
  return { removedChunks, removedBytes, deferredChunks };
}
