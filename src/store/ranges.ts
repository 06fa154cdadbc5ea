import type { Range } from './types.ts';
import { coalesce } from '../util/ranges.ts';

/** The first part of `want` (coalesced or not) not covered by `have` (coalesced), or null when all is covered. */
export function firstUncovered(want: readonly Range[], have: readonly Range[]): Range | null {
  const w = coalesce(want);
  let j = 0;
  for (const r of w) {
    let pos = r.offset;
    const end = r.offset + r.length;
    while (pos < end) {
      while (j < have.length && have[j]!.offset + have[j]!.length <= pos) j++;
      const h = have[j];
      if (!h || h.offset > pos) {
        const gapEnd = h ? Math.min(end, h.offset) : end;
        return { offset: pos, length: gapEnd - pos };
      }
      pos = h.offset + h.length;
    }
  }
  return null;
}
