import { stat } from 'node:fs/promises';
import type { Layout } from './layout.ts';
import type { PackEntry } from './packs.ts';
import { PACK_BYTES } from './chunks.ts';

/**
 * Which small packs gc merges into full-sized ones (docs/store.md, "Merging small packs"). Every
 * flush of an incremental cycle seals its own pack, so an hourly cycle of a few changed blocks adds a
 * pack of a few MiB or less, fully live, that the repack rule (gc.ts, REPACK_BELOW) never touches.
 *
 * A pack file below MERGE_BELOW is *small*. A quarter of the 32 MiB pack target: the packs a merge
 * writes are filled to PACK_BYTES, so they are never small again (a merged byte is copied by merging
 * once, apart from the last, partly filled pack of a run), and packs at or above it already number at
 * most 4 x the fewest possible.
 */
export const MERGE_BELOW = PACK_BYTES / 4;

/**
 * A merge runs once at least this many small packs are eligible (or their live bytes fill a pack):
 * so a gc after every hourly cycle copies a run of packs every few hours, not the last merged pack
 * again each hour, and after a gc fewer than this many small packs are left (besides those of open
 * cycles and the last seconds).
 */
export const MERGE_MIN_PACKS = 8;

interface Small { id: string; entries: readonly PackEntry[]; mtimeMs: number; liveBytes: number }

/**
 * The sealed packs gc merges this pass, oldest first. Eligible: a pack file smaller than `mergeBelow`,
 * last touched before `cutoff` (the grace of gc.ts: a writer reusing one of its chunks touches it),
 * none of whose chunks an open cycle wrote or reused (`written`: the names in the open cycles'
 * refs.log, so a cycle's own sealed packs stay as they are until it is committed or aborted).
 * Unsealed packs are not in the index, so never eligible. When too few are eligible to merge, only
 * those whose live chunks all have a copy in a pack that stays are returned (what a merge killed
 * before it deleted its old packs leaves): deleting them copies nothing.
 */
export async function smallPacksToMerge(layout: Layout, packs: ReadonlyMap<string, readonly PackEntry[]>,
  live: (hex: string) => boolean, written: (hex: string) => boolean, cutoff: number, mergeBelow: number): Promise<Map<string, readonly PackEntry[]>> {
  const small: Small[] = [];
  if (mergeBelow <= 0) return new Map();
  for (const [id, entries] of packs) {
    if (entries.some((e) => written(e.hex))) continue;
    const st = await stat(layout.packPath(id)).catch(() => null);
    if (!st || st.size >= mergeBelow || st.mtimeMs >= cutoff) continue;
    let liveBytes = 0;
    for (const e of entries) if (live(e.hex)) liveBytes += e.length;
    small.push({ id, entries, mtimeMs: st.mtimeMs, liveBytes });
  }
  small.sort((a, b) => a.mtimeMs - b.mtimeMs || (a.id < b.id ? -1 : 1));
  const liveBytes = small.reduce((n, p) => n + p.liveBytes, 0);
  let chosen = small;
  if (small.length < MERGE_MIN_PACKS && liveBytes < PACK_BYTES) {
    const ids = new Set(small.map((p) => p.id));
    const elsewhere = new Set<string>();
    for (const [id, entries] of packs) if (!ids.has(id)) for (const e of entries) elsewhere.add(e.hex);
    chosen = small.filter((p) => p.entries.every((e) => !live(e.hex) || elsewhere.has(e.hex)));
  }
  return new Map(chosen.map((p) => [p.id, p.entries]));
}
