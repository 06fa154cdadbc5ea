/**
 * The journals of an open cycle (files in its folder) and the order a flush makes them durable:
 *   1. the chunk files written since the last flush (chunks.ts), before anything names them;
 *   2. disk-<n>.sub, the overlay (overlay.ts): records naming sub-chunks, appended;
 *   3. disk-<n>.idx, the working index: slots naming whole chunks, written in place;
 *   4. held.log: the ranges all that makes whole, JSON lines {d, o, l}, appended.
 * So held.log never claims a range whose bytes are not durable, also after a crash. refs.log
 * (refs.ts, for gc) is appended before each chunk is created or reused and is not part of a flush.
 * On reopen a torn last line of held.log or refs.log is ended (and ignored); a torn overlay record is cut off.
 */
import { constants } from 'node:fs';
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { indexName, SLOT } from './layout.ts';
import { isZeroSlot, type ChunkWriter } from './chunks.ts';
import { RefsJournal } from './refs.ts';
import { encodeRecords, overlayName, readOverlay, RECORD, RESET, type Overlay } from './overlay.ts';
import { coalesce, type Range } from '../model/ranges.ts';
import type { DiskSpec, HeldRanges } from '../model/images.ts';
import { writeFully } from '../util/write-fully.ts';
import { crashPoint } from '../util/crash.ts';

/** Slots per page of the index file that `WorkingIndex.get` reads and keeps (4 KiB: 128 MiB of disk at 1 MiB chunks). */
export const INDEX_PAGE_SLOTS = 128;
/** Pages it keeps, least recently used dropped first (64 KiB whatever the disk size). */
const INDEX_PAGES = 16;

/** One disk's working index file (32 bytes a slot), and the slots changed since it was last written. */
export class WorkingIndex {
  /** slot -> new digest (null = hole), not yet in the file. */
  private readonly changed = new Map<number, Buffer | null>();
  /**
   * Pages of the file as last read, so the partial writes of an incremental cycle (CBT order:
   * ascending) do not read 32 bytes through the thread pool each. `write` drops them all.
   */
  private readonly pages = new Map<number, Promise<Buffer>>();

  constructor(private readonly fh: FileHandle, readonly slots: number) {}

  /** The digest slot `i` names now (null = hole). */
  async get(i: number): Promise<Buffer | null> {
    if (this.changed.has(i)) return this.changed.get(i)!;
    const page = await this.page(Math.floor(i / INDEX_PAGE_SLOTS));
    const at = (i % INDEX_PAGE_SLOTS) * SLOT;
    if (at + SLOT > page.length) return null;
    const b = page.subarray(at, at + SLOT);
    return isZeroSlot(b) ? null : Buffer.from(b);
  }

  private page(p: number): Promise<Buffer> {
    let page = this.pages.get(p);
    if (page) {
      this.pages.delete(p); // re-insert: Map order = least recently used first
      this.pages.set(p, page);
      return page;
    }
    page = (async () => {
      const b = Buffer.allocUnsafe(INDEX_PAGE_SLOTS * SLOT);
      const { bytesRead } = await this.fh.read(b, 0, b.length, p * INDEX_PAGE_SLOTS * SLOT);
      return b.subarray(0, bytesRead);
    })();
    const mine = page;
    page.catch(() => { if (this.pages.get(p) === mine) this.pages.delete(p); });
    this.pages.set(p, page);
    if (this.pages.size > INDEX_PAGES) this.pages.delete(this.pages.keys().next().value as number);
    return page;
  }

  set(i: number, digest: Buffer | null): void { this.changed.set(i, digest); }

  /** The changes to write now (later ones are written by a later flush). */
  changes(): Map<number, Buffer | null> { return new Map(this.changed); }

  async write(changes: Map<number, Buffer | null>): Promise<void> {
    if (changes.size === 0) return;
    const zero = Buffer.alloc(SLOT);
    const idxs = [...changes.keys()].sort((a, b) => a - b);
    try {
      for (let k = 0; k < idxs.length;) {
        let j = k + 1;
        while (j < idxs.length && idxs[j] === idxs[j - 1]! + 1 && j - k < 8192) j++;
        const buf = Buffer.concat(idxs.slice(k, j).map((i) => changes.get(i) ?? zero));
        await writeFully(this.fh, buf, idxs[k]! * SLOT);
        k = j;
      }
    } finally {
      // pages read before or while these slots were written may hold their old digests; `changed`
      // answers for them only until `written`, so no page from before this point may be used after it
      this.pages.clear();
    }
    await this.fh.sync();
  }

  /** `changes` are in the file: forget those not changed again meanwhile. */
  written(changes: Map<number, Buffer | null>): void {
    for (const [i, v] of changes) if (this.changed.get(i) === v) this.changed.delete(i);
  }

  /** `count` slots from slot `first` as they stand now (the file with the unwritten changes over it; holes as zeros). */
  async current(first: number, count: number): Promise<Buffer> {
    const out = Buffer.alloc(count * SLOT);
    await this.fh.read(out, 0, out.length, first * SLOT);
    for (const [i, d] of this.changed) {
      if (i < first || i >= first + count) continue;
      if (d) d.copy(out, (i - first) * SLOT); else out.fill(0, (i - first) * SLOT, (i - first + 1) * SLOT);
    }
    return out;
  }

  /** Up to `count` slots from slot `first`, as in the file. */
  async readSlots(first: number, count: number, into: Buffer): Promise<Buffer> {
    const { bytesRead } = await this.fh.read(into, 0, count * SLOT, first * SLOT);
    return into.subarray(0, bytesRead);
  }

  close(): Promise<void> { return this.fh.close(); }
}

export interface OverlayRecord { slot: number; sub: number; digest: Buffer | null }

/**
 * One disk's overlay file: the overlay in effect, and the records not yet appended to the file.
 * Records are written at the end of the last whole record, not in append mode: a torn record (a
 * crash, or a write that failed half way) is overwritten by the next append instead of shifting
 * every record after it.
 */
export class WorkingOverlay {
  private pending: OverlayRecord[] = [];

  private constructor(private readonly fh: FileHandle, readonly overlay: Overlay, private size: number) {}

  /** Open the overlay file at `path` (created when missing), cutting a torn last record off. */
  static async open(path: string): Promise<WorkingOverlay> {
    const overlay = await readOverlay(path);
    const fh = await open(path, constants.O_RDWR | constants.O_CREAT, 0o600);
    try {
      const { size } = await fh.stat();
      const whole = size - (size % RECORD);
      if (whole !== size) { await fh.truncate(whole); await fh.sync(); }
      return new WorkingOverlay(fh, overlay, whole);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** A whole chunk was written to slot `i`: its sub-chunks no longer apply. */
  resetSlot(i: number): void {
    if (!this.overlay.has(i)) return;
    this.overlay.delete(i);
    this.pending.push({ slot: i, sub: RESET, digest: null });
  }

  /** Sub-chunk `k` of slot `i` is now `digest` (zeros = hole); returns how many sub-chunks the slot has in the overlay. */
  setSub(i: number, k: number, digest: Buffer): number {
    let m = this.overlay.get(i);
    if (!m) this.overlay.set(i, (m = new Map()));
    m.set(k, digest);
    this.pending.push({ slot: i, sub: k, digest });
    return m.size;
  }

  take(): OverlayRecord[] { return this.pending.splice(0); }
  /** Records taken but not appended: they go first in the next flush. */
  giveBack(records: OverlayRecord[]): void { this.pending.unshift(...records); }

  async append(records: OverlayRecord[]): Promise<void> {
    if (records.length === 0) return;
    const buf = encodeRecords(records);
    await writeFully(this.fh, buf, this.size);
    await this.fh.sync();
    this.size += buf.length;
  }

  close(): Promise<void> { return this.fh.close(); }
}

/** The journals of one disk, and the ranges of it held (in held.log) and written since the last flush. */
export class DiskJournals {
  held: Range[];
  readonly unflushed: Range[] = [];
  constructor(readonly spec: DiskSpec, readonly index: WorkingIndex, readonly overlay: WorkingOverlay, held: Range[]) {
    this.held = held;
  }

  /** A write of `range` is applied (in the index, the overlay or the writer's cache): the next flush claims it. */
  noteWritten(range: Range): void { this.unflushed.push(range); }
}

/** Parse held.log: JSON lines {d, o, l}; a torn last line (crash mid-append) is ignored. */
export function parseHeld(text: string): Map<number, Range[]> {
  const out = new Map<number, Range[]>();
  for (const line of text.split('\n')) {
    if (!line) continue;
    try {
      const r = JSON.parse(line) as { d: number; o: number; l: number };
      if (!Number.isSafeInteger(r.d) || !Number.isSafeInteger(r.o) || !Number.isSafeInteger(r.l)) continue;
      let list = out.get(r.d);
      if (!list) out.set(r.d, (list = []));
      list.push({ offset: r.o, length: r.l });
    } catch { /* torn line */ }
  }
  return out;
}

export class CycleJournals {
  private constructor(readonly refs: RefsJournal, private readonly heldFh: FileHandle,
    readonly disks: ReadonlyMap<number, DiskJournals>) {}

  /** Open the journals of the cycle folder `dir` (created or reopened), ending torn last lines. */
  static async open(dir: string, rec: { disks: readonly DiskSpec[]; chunkSize: number }): Promise<CycleJournals> {
    // A crash may have left a torn last line in either journal: end it, so that what is appended
    // now starts on a line of its own.
    const refsFh = await open(join(dir, 'refs.log'), 'a', 0o600);
    await refsFh.write('\n');
    const refs = new RefsJournal(refsFh);
    let heldFh: FileHandle | undefined;
    const handles: { close(): Promise<void> }[] = [];
    try {
      heldFh = await open(join(dir, 'held.log'), 'a+', 0o600);
      const heldText = await readFile(join(dir, 'held.log'), 'utf8');
      if (heldText.length > 0 && !heldText.endsWith('\n')) { await heldFh.write('\n'); await heldFh.sync(); }
      const held = parseHeld(heldText);
      const disks = new Map<number, DiskJournals>();
      for (const d of rec.disks) {
        const idx = await open(join(dir, indexName(d.disk)), 'r+');
        handles.push(idx);
        const overlay = await WorkingOverlay.open(join(dir, overlayName(d.disk)));
        handles.push(overlay);
        disks.set(d.disk, new DiskJournals(d, new WorkingIndex(idx, Math.ceil(d.capacity / rec.chunkSize)),
          overlay, coalesce(held.get(d.disk) ?? [])));
      }
      return new CycleJournals(refs, heldFh, disks);
    } catch (e) {
      for (const fh of handles) await fh.close().catch(() => {});
      await refs.close().catch(() => {});
      await heldFh?.close();
      throw e;
    }
  }

  held(): HeldRanges[] {
    return [...this.disks.values()].map((d) => ({ disk: d.spec.disk, ranges: d.held.map((r) => ({ ...r })) }));
  }

  /**
   * Make the writes noted so far durable, in the order above, and held. The ranges to claim are
   * taken first; then `settle` stores what the writer still keeps in memory for them (cached
   * sub-chunks); then the index and overlay changes are taken, and written. On failure nothing is
   * claimed and the next flush tries again.
   */
  async flush(chunks: ChunkWriter, settle: () => Promise<void>): Promise<void> {
    const disks = [...this.disks.values()];
    const ranges = disks.map((d) => d.unflushed.splice(0));
    let changes: Map<number, Buffer | null>[] = [];
    try {
      await settle();
      changes = disks.map((d) => d.index.changes());
      const records = disks.map((d) => d.overlay.take());
      try {
        await chunks.sync();
        crashPoint('store:flush');
        await Promise.all(disks.map((d, k) => d.overlay.append(records[k]!)));
      } catch (e) {
        disks.forEach((d, k) => d.overlay.giveBack(records[k]!));
        throw e;
      }
      await Promise.all(disks.map((d, k) => d.index.write(changes[k]!)));
      const lines: string[] = [];
      disks.forEach((d, k) => { for (const r of coalesce(ranges[k]!)) lines.push(JSON.stringify({ d: d.spec.disk, o: r.offset, l: r.length })); });
      if (lines.length > 0) {
        await writeFully(this.heldFh, `${lines.join('\n')}\n`, null);
        await this.heldFh.sync();
      }
    } catch (e) {
      disks.forEach((d, k) => d.unflushed.unshift(...ranges[k]!));
      throw e;
    }
    disks.forEach((d, k) => {
      if (ranges[k]!.length > 0) d.held = coalesce(d.held.concat(ranges[k]!));
      d.index.written(changes[k]!);
    });
  }

  async close(): Promise<void> {
    for (const d of this.disks.values()) {
      await d.index.close().catch(() => {});
      await d.overlay.close().catch(() => {});
    }
    await this.heldFh.close().catch(() => {});
    await this.refs.close().catch(() => {});
  }
}
