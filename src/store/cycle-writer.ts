/**
 * One open cycle of the store, from begin (a new cycle, or one reopened after a crash) through
 * writes and flushes to commit, abort or detach. It composes the pieces: the cycle record
 * (cycle-record.ts), creation and recovery (new-cycle.ts, recovery.ts), the journals and their
 * flush order (journals.ts), the data path (extent-writer.ts over chunks.ts) and publishing (publish.ts).
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { assertId } from '../util/ids.ts';
import { fsyncDir } from '../util/fsync.ts';
import { StoreError, type CommitOptions, type CycleWriter, type StagedImage, type WriteExtentOptions } from './types.ts';
import { readDiskBytes } from './image-reader.ts';
import { crashPoint } from '../util/crash.ts';
import type { Layout } from './layout.ts';
import { ChunkWriter } from './chunks.ts';
import { validateBaseDisks, validateDisks, type CycleRecord } from './cycle-record.ts';
import { createCycle } from './new-cycle.ts';
import { reopenCycle } from './recovery.ts';
import { CycleJournals } from './journals.ts';
import { ExtentWriter, isWholeChunk } from './extent-writer.ts';
import { publishImage } from './publish.ts';
import { firstUncovered } from '../model/ranges.ts';
import type { DiskSpec, HeldRanges, ImageInfo } from '../model/images.ts';

/** Largest StagedImage.read (as the store's MAX_READ). */
const MAX_STAGED_READ = 64 << 20;

export interface CycleEnv {
  layout: Layout;
  chunkSize: number;
  /** Called when the writer is done (commit or abort) so the store forgets it. */
  onClose: (w: StoreCycleWriter) => void;
}

/**
 * The store's CycleWriter: one open cycle, from begin (new, or reopened after a crash) through
 * writes and flushes to commit (published as an image), abort or detach.
 */
export class StoreCycleWriter implements CycleWriter {
  readonly disks: readonly DiskSpec[];
  private readonly chunks: ChunkWriter;
  private readonly extents: ExtentWriter;
  private flushChain: Promise<void> = Promise.resolve();
  private status: 'open' | 'closing' | 'closed' = 'open';

  private constructor(private readonly env: CycleEnv, private readonly rec: CycleRecord, private readonly dir: string,
    private readonly journals: CycleJournals) {
    this.disks = Object.freeze(rec.disks.map((d) => Object.freeze({ ...d })));
    this.chunks = new ChunkWriter(env.layout, journals.refs);
    this.extents = new ExtentWriter(rec.chunkSize, this.chunks, journals.disks);
  }

  get chunkSize(): number { return this.rec.chunkSize; }
  get sourceId(): string { return this.rec.sourceId; }
  get cycleId(): string { return this.rec.cycleId; }
  get baseImageId(): string | null { return this.rec.baseImageId; }
  get baseDisks(): readonly (number | null)[] | null { return this.rec.baseImageId !== null ? this.rec.baseDisks ?? null : null; }
  get key(): string { return `${this.sourceId}/${this.cycleId}`; }
  get isOpen(): boolean { return this.status === 'open'; }
  /** Chunk files this writer created (for tests and stats). */
  get newChunks(): number { return this.chunks.newChunks; }

  /** Begin a new cycle, or resume the open one with the same ids. */
  static async begin(env: CycleEnv, opts: { sourceId: string; cycleId: string; disks: DiskSpec[]; baseImageId?: string | null; baseDisks?: (number | null)[] }): Promise<StoreCycleWriter> {
    const { layout } = env;
    const src = assertId(opts.sourceId, 'source id');
    const cid = assertId(opts.cycleId, 'cycle id');
    const disks = validateDisks(opts.disks);
    const baseDisks = validateBaseDisks(opts.baseDisks, disks);
    const dir = layout.cycleDir(src, cid);
    await mkdir(layout.cyclesDir(src), { recursive: true });
    await mkdir(layout.imagesDir(src), { recursive: true });
    const rec = await reopenCycle(dir, src, cid, { disks, baseImageId: opts.baseImageId, baseDisks })
      ?? await createCycle(layout, env.chunkSize, src, cid, disks, opts.baseImageId, dir, baseDisks);
    return new StoreCycleWriter(env, rec, dir, await CycleJournals.open(dir, rec));
  }

  wholeChunk(disk: number, offset: number, length: number): boolean {
    const ds = this.journals.disks.get(disk);
    return ds !== undefined && isWholeChunk(this.rec.chunkSize, ds.spec.capacity, offset, length);
  }

  async writeExtent(disk: number, offset: number, length: number, data: Uint8Array | null, opts?: WriteExtentOptions): Promise<void> {
    // Everything up to the chain registration runs synchronously, so overlapping calls queue in call order.
    if (this.status !== 'open') {
      throw new StoreError('CYCLE_CLOSED', `cycle ${this.cycleId} of source ${this.sourceId} is ${this.status === 'closing' ? 'being committed or aborted' : 'closed'}`,
        { fix: 'begin (or resume) the cycle again', transient: true });
    }
    const ds = this.journals.disks.get(disk);
    if (!ds) throw new StoreError('BAD_DISK', `source ${this.sourceId} cycle ${this.cycleId} has no disk ${disk} (disks: ${[...this.journals.disks.keys()].join(', ')})`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > ds.spec.capacity) {
      throw new StoreError('OUT_OF_RANGE', `extent offset ${offset} length ${length} is outside disk ${disk} (capacity ${ds.spec.capacity} bytes)`,
        { fix: 'begin the cycle with the disk\'s current capacity' });
    }
    if (data !== null && data.length !== length) {
      throw new StoreError('BAD_LENGTH', `extent at offset ${offset} of disk ${disk} says length ${length} but carries ${data.length} bytes`);
    }
    if (length === 0) return;
    await this.extents.write(ds, offset, length, data, opts?.sha256, opts?.check === true);
  }

  flush(): Promise<void> {
    const run = this.flushChain.then(async () => {
      await this.extents.settled();
      await this.journals.flush(this.chunks, () => this.extents.storeCached());
    });
    this.flushChain = run.catch(() => {});
    return run;
  }

  async held(): Promise<HeldRanges[]> {
    return this.journals.held();
  }

  async commit(opts: CommitOptions = {}): Promise<ImageInfo> {
    this.assertOpen();
    this.status = 'closing';
    try {
      await this.flush();
      this.checkExpected(opts);
      crashPoint('store:commit-flushed');
      if (opts.verify) await opts.verify(this.staged());
      crashPoint('store:commit-verified');
      const info = await publishImage(this.env.layout, this.rec, this.dir, [...this.journals.disks.values()], opts.meta ?? {});
      crashPoint('store:commit-published');
      await this.journals.close();
      await rm(this.dir, { recursive: true, force: true });
      await fsyncDir(this.env.layout.cyclesDir(this.sourceId));
      this.status = 'closed';
      this.env.onClose(this);
      return info;
    } catch (e) {
      if (this.status === 'closing') this.status = 'open';
      throw e;
    }
  }

  /** The flushed cycle as the image it would publish. */
  private staged(): StagedImage {
    const { layout } = this.env;
    const chunkSize = this.rec.chunkSize;
    return {
      disks: this.disks,
      read: async (disk, offset, length) => {
        const ds = this.journals.disks.get(disk);
        if (!ds) throw new StoreError('BAD_DISK', `cycle ${this.cycleId} of source ${this.sourceId} has no disk ${disk}`);
        const cap = ds.spec.capacity;
        if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > cap || length > MAX_STAGED_READ) {
          throw new StoreError('OUT_OF_RANGE', `read offset ${offset} length ${length} is outside disk ${disk} (capacity ${cap} bytes) or larger than ${MAX_STAGED_READ}`);
        }
        const slots = (first: number, count: number) => ds.index.current(first, count);
        return readDiskBytes(layout, chunkSize, { capacity: cap, slots, overlay: ds.overlay.overlay }, offset, length);
      },
    };
  }

  private checkExpected(opts: CommitOptions): void {
    for (const exp of opts.expected ?? []) {
      const ds = this.journals.disks.get(exp.disk);
      if (!ds) throw new StoreError('BAD_DISK', `commit expects disk ${exp.disk}, but cycle ${this.cycleId} of source ${this.sourceId} has no such disk`);
      const gap = firstUncovered(exp.ranges, ds.held);
      if (gap) {
        throw new StoreError('MISSING_EXTENTS', `cycle ${this.cycleId} of source ${this.sourceId}: disk ${exp.disk} is missing bytes `
          + `${gap.offset}-${gap.offset + gap.length - 1} (${gap.length} bytes at offset ${gap.offset}) that the sender claims to have sent`,
        { fix: 'resume the cycle and send the missing extents, then commit again' });
      }
    }
  }

  async abort(): Promise<void> {
    if (this.status === 'closed') return;
    this.status = 'closing';
    await this.extents.settled();
    await this.flushChain;
    this.extents.discardCached();
    await this.chunks.discard();
    await this.journals.close();
    await rm(this.dir, { recursive: true, force: true });
    await fsyncDir(this.env.layout.cyclesDir(this.sourceId)).catch(() => {});
    this.status = 'closed';
    this.env.onClose(this);
  }

  /** Release files without committing or aborting (the cycle stays open on disk, resumable). */
  async detach(): Promise<void> {
    if (this.status === 'closed') return;
    this.status = 'closing';
    await this.extents.settled();
    await this.flush().catch(() => {});
    await this.chunks.discard(); // an unflushed pack: nothing durable names its chunks
    await this.journals.close();
    await rm(join(this.dir, 'owner'), { force: true });
    this.status = 'closed';
    this.env.onClose(this);
  }

  private assertOpen(): void {
    if (this.status !== 'open') throw new StoreError('CYCLE_CLOSED', `cycle ${this.cycleId} of source ${this.sourceId} is no longer open`, { fix: 'begin (or resume) the cycle again', transient: true });
  }
}
