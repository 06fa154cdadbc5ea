/**
 * Byte ranges of a disk and the helpers every layer uses on them (the engine's change lists,
 * the store's held journal, the sender's held/sent sets).
 */

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

/** Sorted, coalesced set of half-open byte ranges [start, end). */
export class RangeSet {
  private starts: number[] = [];
  private ends: number[] = [];

  static from(ranges: readonly Range[]): RangeSet {
    const s = new RangeSet();
    for (const r of ranges) s.add(r.offset, r.length);
    return s;
  }

  get size(): number { return this.starts.length; }

  /** Index of the first range whose end is > pos. */
  private firstEndAfter(pos: number): number {
    let lo = 0; let hi = this.ends.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (this.ends[mid]! > pos) hi = mid; else lo = mid + 1; }
    return lo;
  }

  add(offset: number, length: number): void {
    if (length <= 0) return;
    let start = offset; let end = offset + length;
    // ranges touching [start, end] merge with it
    let i = this.firstEndAfter(start - 1);
    if (i > 0 && this.ends[i - 1] === start) i--;
    let j = i;
    while (j < this.starts.length && this.starts[j]! <= end) {
      start = Math.min(start, this.starts[j]!); end = Math.max(end, this.ends[j]!); j++;
    }
    this.starts.splice(i, j - i, start);
    this.ends.splice(i, j - i, end);
  }

  contains(offset: number, length: number): boolean {
    const i = this.firstEndAfter(offset);
    return i < this.starts.length && this.starts[i]! <= offset && this.ends[i]! >= offset + length;
  }

  overlaps(offset: number, length: number): boolean {
    const i = this.firstEndAfter(offset);
    return i < this.starts.length && this.starts[i]! < offset + length;
  }

  toRanges(): Range[] {
    return this.starts.map((s, i) => ({ offset: s, length: this.ends[i]! - s }));
  }

  total(): number {
    let t = 0;
    for (let i = 0; i < this.starts.length; i++) t += this.ends[i]! - this.starts[i]!;
    return t;
  }
}
