import { createReadStream } from 'node:fs';
import { open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { readFullyAt, truncatedPack } from './pack-readers.ts';
import { join } from 'node:path';
import { fsyncDir } from '../util/fsync.ts';
import { isValidId } from '../util/ids.ts';
import { SLOT, type Layout } from './layout.ts';
import { PACK_ID, packWriterPid, PackWriter, type PackEntry } from './packs.ts';
import { PACK_BYTES } from './chunks.ts';
import { overlayDigests, readOverlay } from './overlay.ts';
import { StoreError } from './types.ts';
import { isZeroSlot } from './chunks.ts';
import { pidAlive } from './pins.ts';
import { crashPoint } from '../util/crash.ts';
import { MERGE_BELOW, smallPacksToMerge } from './pack-merge.ts';

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

/**
 * A pack is rewritten (its live chunks copied to a new pack) or deleted when less than this share
 * of its chunk bytes is still referenced. 0.5: a repack copies at most as many bytes as it frees,
 * and the space packs hold for dead chunks stays at most the live data's size (docs/store.md, "Packs").
 */
export const REPACK_BELOW = 0.5;

export interface GcResult {
  removedChunks: number;
  removedBytes: number;
  /** Packs deleted (after their live chunks were copied). */
  removedPacks?: number;
  /** Live chunks copied out of packs that went. */
  repackedChunks?: number;
  repackedBytes?: number;
  /** Small packs deleted after their live chunks were merged into full-sized packs (pack-merge.ts). */
  mergedPacks?: number;
  /** Live chunk bytes the merge copied. */
  mergedBytes?: number;
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

async function markRefs(path: string, marks: Set<string>, written: Set<string>): Promise<void> {
  const add = (hex: string) => { const k = hex.slice(0, 16); marks.add(k); written.add(k); };
  const stream = createReadStream(path, { encoding: 'utf8', highWaterMark: 1 << 20 });
  let rest = '';
  try {
    for await (const chunk of stream) {
      const lines = (rest + (chunk as string)).split('\n');
      rest = lines.pop()!;
      for (const l of lines) if (l.length === 64) add(l);
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  if (rest.length === 64) add(rest);
}

/** Mark what folder `dir` names; `written`: also note an open cycle's refs.log (the chunks it wrote or reused) there. */
async function markDir(dir: string, marks: Set<string>, written?: Set<string>): Promise<void> {
  for (const n of await names(dir)) {
    if (/^disk-[0-9]+\.idx$/.test(n)) await markIndex(join(dir, n), marks);
    if (/^disk-[0-9]+\.sub$/.test(n)) for (const hex of overlayDigests(await readOverlay(join(dir, n)))) marks.add(hex.slice(0, 16));
  }
  if (written) await markRefs(join(dir, 'refs.log'), marks, written);
}

export async function collectGarbage(layout: Layout, graceMs = GRACE_MS, repackBelow = REPACK_BELOW, mergeBelow = MERGE_BELOW): Promise<GcResult> {
  const t0 = Date.now();
  const marks = new Set<string>();
  const written = new Set<string>();
  const sources = (await names(layout.sourcesDir)).filter((s) => isValidId(s));
  for (const src of sources) {
    for (const c of await names(layout.cyclesDir(src))) await markDir(join(layout.cyclesDir(src), c), marks, written);
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
      await markDir(join(layout.imagesDir(src), i), marks);
    }
  }
  const cutoff = t0 - graceMs;
  return sweepPacks(layout, marks, written, cutoff, repackBelow, mergeBelow);
}

/** Remove what dead processes left in the packs folder: unsealed packs, index temp files; put back packs a dead gc set aside. */
export async function removePackLeftovers(layout: Layout): Promise<void> {
  const dir = layout.packsDir;
  let changed = false;
  const present = new Set(await names(dir));
  for (const n of present) {
    const aside = /^\.gc-([0-9]+)-(.+)\.pack$/.exec(n);
    if (aside) {
      if (pidAlive(Number(aside[1]))) continue;
      // Set aside by a gc that died: put it back while its index is there (the next sweep judges it again).
      if (present.has(`${aside[2]}.idx`)) await rename(join(dir, n), layout.packPath(aside[2]!)).catch(() => {});
      else await unlink(join(dir, n)).catch(() => {});
      changed = true;
      continue;
    }
    const tmp = /^(.+)\.idx\.tmp$/.exec(n);
    if (tmp && !pidAlive(packWriterPid(tmp[1]!))) { await unlink(join(dir, n)).catch(() => {}); changed = true; continue; }
    const pack = /^(.+)\.pack$/.exec(n);
    // Never sealed, and its writer is gone: nothing durable names its chunks.
    if (pack && PACK_ID.test(pack[1]!) && !present.has(`${pack[1]}.idx`) && !pidAlive(packWriterPid(pack[1]!))) {
      await unlink(join(dir, n)).catch(() => {});
      changed = true;
    }
  }
  if (changed) await fsyncDir(dir).catch(() => {});
}

/**
 * Sweep the packs against the marks. A pack whose live share (bytes of marked chunks / bytes of
 * chunks) is below REPACK_BELOW goes (`rewritePacks`). Then small packs are merged (pack-merge.ts):
 * their live chunks are copied into full-sized packs and they go the same way. Leftovers of dead
 * processes (unsealed packs, index temp files, packs set aside) are cleaned up first.
 */
async function sweepPacks(layout: Layout, marks: Set<string>, written: Set<string>, cutoff: number, repackBelow: number, mergeBelow: number): Promise<GcResult> {
  const index = layout.packIndex;
  await removePackLeftovers(layout);
  await index.refresh();

  const live = (hex: string) => marks.has(hex.slice(0, 16));
  const doomed = new Map<string, readonly PackEntry[]>();
  let deferredChunks = 0;
  for (const [id, entries] of index.allPacks()) {
    let total = 0; let liveBytes = 0; let dead = 0;
    for (const e of entries) { total += e.length; if (live(e.hex)) liveBytes += e.length; else dead++; }
    if (dead === 0 || (total > 0 && liveBytes / total >= repackBelow)) continue;
    const st = await stat(layout.packPath(id)).catch(() => null);
    if (!st) continue;
    if (st.mtimeMs >= cutoff) { deferredChunks += dead; continue; }
    doomed.set(id, entries);
  }
  const repack = await rewritePacks(layout, doomed, live, cutoff, () => crashPoint('store:gc-repacked'), () => crashPoint('store:gc'));
  // Packs repacked or put back above were written or touched after the cutoff: never merged now.
  const small = await smallPacksToMerge(layout, index.allPacks(), live, (hex) => written.has(hex.slice(0, 16)), cutoff, mergeBelow);
  const merge = await rewritePacks(layout, small, live, cutoff, () => crashPoint('store:gc-merged'), () => crashPoint('store:gc-merge-aside'));
  return {
    removedChunks: repack.removedChunks + merge.removedChunks,
    removedBytes: repack.removedBytes + merge.removedBytes,
    deferredChunks: deferredChunks + repack.deferredChunks + merge.deferredChunks,
    removedPacks: repack.retiredPacks,
    repackedChunks: repack.copiedChunks,
    repackedBytes: repack.copiedBytes,
    mergedPacks: merge.retiredPacks,
    mergedBytes: merge.copiedBytes,
  };
}

/** Most bytes one read of a pack being rewritten spans, and the most dead bytes a read may skip over. */
const RUN_BYTES = 8 << 20;
const RUN_GAP = 64 << 10;

/** `copy` (sorted by offset) cut into runs that one read each fetches: near neighbours, at most RUN_BYTES. */
function* readRuns(copy: readonly PackEntry[]): Generator<PackEntry[]> {
  let run: PackEntry[] = [];
  for (const e of copy) {
    const first = run[0]; const last = run[run.length - 1];
    if (first && last && (e.offset - (last.offset + last.length) > RUN_GAP || e.offset + e.length - first.offset > RUN_BYTES)) { yield run; run = []; }
    run.push(e);
  }
  if (run.length > 0) yield run;
}

interface Rewrite { copiedChunks: number; copiedBytes: number; retiredPacks: number; removedChunks: number; removedBytes: number; deferredChunks: number }

/**
 * Retire the packs `doomed`: their live chunks that no other pack holds are first copied into new
 * packs (sealed, folder fsynced: then the crash point `copied`), then each old pack is renamed aside (then
 * the crash point `aside`), its mtime checked again (a writer that reused one of its chunks meanwhile touched
 * it: it is put back) and its index and file are deleted. Killed anywhere, a chunk is in its old
 * pack, its new one, or both; removePackLeftovers puts back a pack set aside.
 */
async function rewritePacks(layout: Layout, doomed: ReadonlyMap<string, readonly PackEntry[]>, live: (hex: string) => boolean,
  cutoff: number, copied: () => void, aside: () => void): Promise<Rewrite> {
  const dir = layout.packsDir;
  const index = layout.packIndex;
  const kept = new Set<string>();
  for (const [id, entries] of index.allPacks()) if (!doomed.has(id)) for (const e of entries) kept.add(e.hex);
  let copiedChunks = 0; let copiedBytes = 0;
  let writer: PackWriter | null = null;
  const sealed: Promise<void>[] = [];
  for (const [id, entries] of doomed) {
    const copy = entries.filter((e) => live(e.hex) && !kept.has(e.hex)).sort((a, b) => a.offset - b.offset);
    if (copy.length === 0) continue;
    const fh = await open(layout.packPath(id), 'r');
    try {
      const { size } = await fh.stat();
      for (const run of readRuns(copy)) {
        const start = run[0]!.offset;
        const end = run[run.length - 1]!.offset + run[run.length - 1]!.length;
        // a pack shorter than its index is damaged: its chunks are not copied under their names as zeros
        if (end > size) throw truncatedPack(id, size, end, 'gc stops before it deletes anything');
        const buf = await readFullyAt(fh, start, end - start, undefined, layout.packPath(id));
        const writes: Promise<void>[] = [];
        const full: PackWriter[] = [];
        for (const e of run) {
          if (kept.has(e.hex)) continue;
          kept.add(e.hex);
          writer ??= await PackWriter.create(layout);
          writes.push(writer.append(e.hex, buf.subarray(e.offset - start, e.offset - start + e.length)).written);
          copiedChunks++;
          copiedBytes += e.length;
          if (writer.bytes >= PACK_BYTES) { full.push(writer); writer = null; }
        }
        // every copy written before its pack is sealed: a failed write stops gc before any old pack goes
        await Promise.all(writes);
        for (const w of full) sealed.push(w.seal(index));
      }
    } finally {
      await fh.close();
    }
  }
  if (writer) sealed.push(writer.seal(index));
  if (sealed.length > 0) {
    await Promise.all(sealed);
    await fsyncDir(dir);
    copied();
  }
  let removedChunks = 0; let removedBytes = 0; let retiredPacks = 0; let deferredChunks = 0;
  for (const [id, entries] of doomed) {
    const path = layout.packPath(id);
    const asidePath = join(dir, `.gc-${process.pid}-${id}.pack`);
    try { await rename(path, asidePath); } catch { continue; }
    aside();
    const st = await stat(asidePath);
    const dead = entries.filter((e) => !live(e.hex));
    if (st.mtimeMs >= cutoff) {
      await rename(asidePath, path);
      await fsyncDir(dir);
      deferredChunks += dead.length;
      continue;
    }
    await unlink(layout.packIndexPath(id));
    await unlink(asidePath);
    index.forget(id);
    retiredPacks++;
    removedChunks += dead.length;
    for (const e of dead) removedBytes += e.length;
  }
  if (doomed.size > 0) await fsyncDir(dir).catch(() => {});
  return { copiedChunks, copiedBytes, retiredPacks, removedChunks, removedBytes, deferredChunks };
}
