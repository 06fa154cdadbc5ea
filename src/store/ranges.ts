import type { Range } from './types.ts';

/** Sort and merge overlapping or touching ranges; drops empty ones. */
export function coalesce(ranges: readonly Range[]): Range[] {
  const sorted = ranges.filter((r) => r.length > 0).slice().sort((a, b) => a.offset - b.offset);
  const out: Range[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      const end = Math.max(last.offset + last.length, r.offset + r.length);
      last.length = end - last.offset;
    } else {
      out.push({ offset: r.offset, length: r.length });
    }
  }
  return out;
}

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
