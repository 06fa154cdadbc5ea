/** A byte range of a disk. */
export interface Range { offset: number; length: number }

/** Sort and merge touching or overlapping ranges. */
export function coalesce(ranges: readonly Range[]): Range[] {
  const sorted = ranges.filter((r) => r.length > 0).map((r) => ({ ...r })).sort((a, b) => a.offset - b.offset);
  const out: Range[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else {
      out.push(r);
    }
  }
  return out;
}

/** `ranges` minus `holes` (both any order); result sorted and coalesced. */
export function subtract(ranges: readonly Range[], holes: readonly Range[]): Range[] {
  const cut = coalesce(holes);
  const out: Range[] = [];
  for (const r of coalesce(ranges)) {
    let start = r.offset;
    const end = r.offset + r.length;
    for (const h of cut) {
      const hEnd = h.offset + h.length;
      if (hEnd <= start || h.offset >= end) continue;
      if (h.offset > start) out.push({ offset: start, length: h.offset - start });
      start = Math.max(start, hEnd);
      if (start >= end) break;
    }
    if (start < end) out.push({ offset: start, length: end - start });
  }
  return out;
}

/** Split ranges into pieces of at most `max` bytes, cut on multiples of `max` so pieces stay aligned. */
export function* split(ranges: Iterable<Range>, max: number): Generator<Range> {
  for (const r of ranges) {
    let off = r.offset;
    const end = r.offset + r.length;
    while (off < end) {
      const next = Math.min(end, (Math.floor(off / max) + 1) * max);
      yield { offset: off, length: next - off };
      off = next;
    }
  }
}

export function totalLength(ranges: readonly Range[]): number {
  return ranges.reduce((n, r) => n + r.length, 0);
}
