import { RangeSet } from '../model/ranges.ts';
import type { DiskSpec, HeldRanges } from '../model/images.ts';
/**
 * What one cycle session knows about the bytes of each disk: what the receiver held of the cycle
 * when the session (re)began it, and what this session has sent since. From these: which sends can
 * be skipped, which extents overwrite earlier data, and what the commit must find (`expected`).
 */

export class CycleCoverage {
  private held = new Map<number, RangeSet>();
  private readonly sent = new Map<number, RangeSet>();

  /** The receiver's answer to a (re)begin of the cycle. */
  setHeld(held: readonly HeldRanges[]): void {
    this.held = new Map(held.map((h) => [h.disk, RangeSet.from(h.ranges)]));
  }

  /** The receiver holds all of it and this session has not sent any of it: nothing to send. */
  alreadyHeld(disk: number, offset: number, length: number): boolean {
    return (this.held.get(disk)?.contains(offset, length) ?? false) && !(this.sent.get(disk)?.overlaps(offset, length) ?? false);
  }

  /** The receiver held all of it when the cycle was last (re)begun. */
  heldCovers(disk: number, offset: number, length: number): boolean {
    return this.held.get(disk)?.contains(offset, length) ?? false;
  }

  /**
   * Record that this range goes out now. True when it overwrites bytes sent earlier or held: a
   * held range then no longer proves that this version arrived.
   */
  recordSent(disk: number, offset: number, length: number): boolean {
    let set = this.sent.get(disk);
    if (!set) { set = new RangeSet(); this.sent.set(disk, set); }
    const overwrite = set.overlaps(offset, length) || (this.held.get(disk)?.overlaps(offset, length) ?? false);
    set.add(offset, length);
    return overwrite;
  }

  /** Per disk, everything held or sent: the commit is refused when the receiver lacks any of it. */
  expected(disks: readonly DiskSpec[]): HeldRanges[] {
    return disks.map((d) => {
      const set = RangeSet.from(this.held.get(d.disk)?.toRanges() ?? []);
      for (const r of this.sent.get(d.disk)?.toRanges() ?? []) set.add(r.offset, r.length);
      return { disk: d.disk, ranges: set.toRanges() };
    });
  }
}
