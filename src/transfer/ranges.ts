import type { Range } from '../store/types.ts';

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
