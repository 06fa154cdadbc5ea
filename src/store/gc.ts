import { createReadStream } from 'node:fs';
import { open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir } from '../util/fsync.ts';
import { isValidId } from '../util/ids.ts';
import { SLOT, type Layout } from './layout.ts';
import { PACK_ID, packWriterPid, PackWriter, readAt, type PackEntry } from './packs.ts';
import { PACK_BYTES } from './chunks.ts';
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

export async function collectGarbage(layout: Layout, graceMs = GRACE_MS, repackBelow = REPACK_BELOW): Promise<GcResult> {
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
  return sweepPacks(layout, marks, cutoff, repackBelow);
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
 * chunks) is below REPACK_BELOW goes: its live chunks that no kept pack holds are first copied into
 * a new pack (sealed, folder fsynced), then it is renamed aside, its mtime checked again (a writer
 * that reused one of its chunks meanwhile touched it: it is put back), and its index and file are
 * deleted. Leftovers of dead processes (unsealed packs, index temp files, packs set aside) are
 * cleaned up first.
 */
async function sweepPacks(layout: Layout, marks: Set<string>, cutoff: number, repackBelow: number): Promise<GcResult> {
  const dir = layout.packsDir;
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
  // Live chunks held only by doomed packs are copied into new packs first.
  const kept = new Set<string>();
  for (const [id, entries] of index.allPacks()) if (!doomed.has(id)) for (const e of entries) kept.add(e.hex);
  let repackedChunks = 0; let repackedBytes = 0;
  let writer: PackWriter | null = null;
  const sealed: Promise<void>[] = [];
  for (const [id, entries] of doomed) {
    for (const e of entries) {
      if (!live(e.hex) || kept.has(e.hex)) continue;
      kept.add(e.hex);
      const data = await readAt(layout.packPath(id), e.offset, e.length);
      writer ??= await PackWriter.create(layout);
      await writer.append(e.hex, data).written;
      repackedChunks++;
      repackedBytes += e.length;
      if (writer.bytes >= PACK_BYTES) { sealed.push(writer.seal(index)); writer = null; }
    }
  }
  if (writer) sealed.push(writer.seal(index));
  if (sealed.length > 0) {
    await Promise.all(sealed);
    await fsyncDir(dir);
    crashPoint('store:gc-repacked');
  }
  let removedChunks = 0; let removedBytes = 0; let removedPacks = 0;
  for (const [id, entries] of doomed) {
    const path = layout.packPath(id);
    const aside = join(dir, `.gc-${process.pid}-${id}.pack`);
    try { await rename(path, aside); } catch { continue; }
    crashPoint('store:gc');
    const st = await stat(aside);
    const dead = entries.filter((e) => !live(e.hex));
    if (st.mtimeMs >= cutoff) {
      await rename(aside, path);
      await fsyncDir(dir);
      deferredChunks += dead.length;
      continue;
    }
    await unlink(layout.packIndexPath(id));
    await unlink(aside);
    index.forget(id);
    removedPacks++;
    removedChunks += dead.length;
    for (const e of dead) removedBytes += e.length;
  }
  if (doomed.size > 0) await fsyncDir(dir).catch(() => {});
  return { removedChunks, removedBytes, deferredChunks, removedPacks, repackedChunks, repackedBytes };
}
