/**
 * The image store as one object (ImageStore, store/types.ts): it owns the open cycle writers of this
 * process (one per source and cycle id, cycle-writer.ts), reading committed images (index slots with
 * their sub-chunk overlays, holes as zeros), chunk digests for senders, verify and export under a pin,
 * image removal, retention, and the garbage sweeps (gc.ts) including the ones a sweep owes. The
 * on-disk layout is layout.ts; chunk files are chunks.ts.
 */
import { mkdir, open, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { assertId, isValidId } from '../util/ids.ts';
import { fsyncDir, writeFileAtomic } from '../util/fsync.ts';
import { StoreError, type BeginCycleOptions, type CycleWriter, type ImageStore, type StoreStats } from './types.ts';
import type { ImageInfo } from '../model/images.ts';
import { assertImageId, indexName, Layout, SLOT, STORE_VERSION } from './layout.ts';
import { isZeroSlot, chunkDigest } from './chunks.ts';
import { readDiskBytes, runLimited, slotBytes } from './image-reader.ts';
import { StoreCycleWriter } from './cycle-writer.ts';
import { readCycleRecord, validateDisks } from './cycle-record.ts';
import { alreadyPublished } from './publish.ts';
import { imageIds, listImageRecords, publicInfo, readImageRecord, type ImageRecord } from './images.ts';
import { livePins, pinImage, type Unpin } from './pins.ts';
import { collectGarbage, GRACE_MS, type GcResult } from './gc.ts';
import { exportDisk } from './export.ts';
import { overlayName, readOverlay, subSize, type Overlay } from './overlay.ts';
import { crashPoint } from '../util/crash.ts';

/** Chosen by measurement (bench/store-chunk-size.ts, docs/store.md). */
export const DEFAULT_CHUNK_SIZE = 1 << 20;
/** Largest readImage() request (bounds memory per call). */
export const MAX_READ = 64 << 20;

export interface StoreOptions {
  /** Chunk size for a new store (power of two, 4 KiB – 64 MiB). An existing store keeps its own. */
  chunkSize?: number;
  /** How recent an unreferenced chunk may be and still be spared by a sweep (default 2 s; tests shorten it). */
  gcGraceMs?: number;
  /** gc rewrites or deletes a pack when less than this share of its bytes is live (default REPACK_BELOW, 0.5; 1 = any dead chunk). */
  repackBelow?: number;
  /** gc merges sealed packs smaller than this many bytes into full-sized ones (default MERGE_BELOW, 8 MiB; 0 = never). */
  mergeBelow?: number;
  /** Errors of sweeps the store runs by itself (owed garbage); the marker stays and a later pass retries. */
  onBackgroundError?: (e: unknown) => void;
}

class Store implements ImageStore {
  readonly layout: Layout;
  private readonly active = new Map<string, StoreCycleWriter>();
  /** Overlays of recently read images (see `overlay()`), oldest first. */
  private readonly overlays = new Map<string, Promise<Overlay>>();
  private readonly beginning = new Map<string, Promise<StoreCycleWriter>>();
  /** Sweeps run one at a time, in call order. */
  private sweeps: Promise<unknown> = Promise.resolve();
  private owedSweep: NodeJS.Timeout | null = null;
  private closed = false;

  constructor(readonly root: string, readonly chunkSize: number, private readonly opts: StoreOptions = {}) {
    this.layout = new Layout(root);
  }

  private get graceMs(): number { return this.opts.gcGraceMs ?? GRACE_MS; }

  async beginCycle(opts: BeginCycleOptions): Promise<CycleWriter> {
    const key = `${assertId(opts.sourceId, 'source id')}/${assertId(opts.cycleId, 'cycle id')}`;
    validateDisks(opts.disks);
    const pending = this.beginning.get(key);
    if (pending) await pending.catch(() => {});
    const cur = this.active.get(key);
    if (cur?.isOpen) {
      const same = cur.disks.length === opts.disks.length && cur.disks.every((d) => opts.disks.some((o) => o.disk === d.disk && o.capacity === d.capacity));
      if (!same) {
        throw new StoreError('CYCLE_MISMATCH', `cycle ${opts.cycleId} of source ${opts.sourceId} is open with other disks; resume it with the same disks or abort it`,
          { fix: 'resume the cycle with the disks it was begun with, or abort it' });
      }
      return cur;
    }
    const p = StoreCycleWriter.begin({ layout: this.layout, chunkSize: this.chunkSize, onClose: (w) => { if (this.active.get(w.key) === w) this.active.delete(w.key); } }, opts);
    this.beginning.set(key, p);
    try {
      const c = await p;
      this.active.set(key, c);
      return c;
    } finally {
      this.beginning.delete(key);
    }
  }

  async openCycles(sourceId: string): Promise<string[]> {
    const dir = this.layout.cyclesDir(sourceId);
    const names = await readdir(dir).catch(() => [] as string[]);
    const out: string[] = [];
    for (const n of names) {
      if (!isValidId(n)) continue;
      const rec = await readCycleRecord(join(dir, n));
      if (!rec) continue;
      if (!this.active.has(`${sourceId}/${n}`) && await alreadyPublished(this.layout, rec)) {
        // a crash between publishing the cycle and removing its folder: finish that commit
        await rm(join(dir, n), { recursive: true, force: true });
        await fsyncDir(dir);
        continue;
      }
      out.push(n);
    }
    return out.sort();
  }

  async listSources(): Promise<string[]> {
    return (await readdir(this.layout.sourcesDir).catch(() => [] as string[])).filter((n) => isValidId(n)).sort();
  }

  async listImages(sourceId: string): Promise<ImageInfo[]> {
    return (await listImageRecords(this.layout, assertId(sourceId, 'source id'))).map(publicInfo);
  }

  private async record(sourceId: string, imageId: string): Promise<ImageRecord> {
    assertId(sourceId, 'source id');
    assertImageId(imageId);
    if (!(await stat(this.layout.sourceDir(sourceId)).catch(() => null))) {
      throw new StoreError('NOT_FOUND', `source ${sourceId} has no images in this store`, { fix: 'list the images with `vmlift image ls`' });
    }
    return readImageRecord(this.layout, sourceId, imageId);
  }

  async getImage(sourceId: string, imageId: string): Promise<ImageInfo> {
    return publicInfo(await this.record(sourceId, imageId));
  }

  private diskOf(rec: ImageRecord, disk: number) {
    const d = rec.disks.find((x) => x.disk === disk);
    if (!d) {
      throw new StoreError('NOT_FOUND', `image ${rec.imageId} of source ${rec.sourceId} has no disk ${disk} (disks: ${rec.disks.map((x) => x.disk).join(', ')})`,
        { fix: 'see the disks of the image with `vmlift image show`' });
    }
    return d;
  }

  private async withIndex<T>(rec: ImageRecord, disk: number, fn: (read: (first: number, count: number) => Promise<Buffer>) => Promise<T>): Promise<T> {
    let fh;
    try {
      fh = await open(join(this.layout.imageDir(rec.sourceId, rec.imageId), indexName(disk)), 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new StoreError('NOT_FOUND', `image ${rec.imageId} of source ${rec.sourceId} was removed`, { fix: 'list the images with `vmlift image ls`' });
      throw e;
    }
    try {
      return await fn(async (first, count) => {
        const b = Buffer.alloc(count * SLOT);
        const { bytesRead } = await fh.read(b, 0, b.length, first * SLOT);
        if (bytesRead < b.length) b.fill(0, bytesRead);
        return b;
      });
    } finally {
      await fh.close();
    }
  }

  /**
   * The overlay of a committed image's disk. Committed images never change and image ids are never
   * reused, so the last few are kept: readers call this for every read of an image (checksums,
   * block digests, the CLI), and a long-lived overlay holds up to 16 records per chunk.
   */
  private overlay(rec: ImageRecord, disk: number): Promise<Overlay> {
    const path = join(this.layout.imageDir(rec.sourceId, rec.imageId), overlayName(disk));
    let p = this.overlays.get(path);
    if (!p) {
      p = readOverlay(path);
      p.catch(() => this.overlays.delete(path));
      this.overlays.set(path, p);
      if (this.overlays.size > 16) this.overlays.delete(this.overlays.keys().next().value!);
    }
    return p;
  }

  private slotBytes(rec: ImageRecord, slot: Buffer, len: number, subs: Map<number, Buffer> | undefined): Promise<Buffer | null> {
    return slotBytes(this.layout, rec.chunkSize, slot, len, subs);
  }

  async readImage(sourceId: string, imageId: string, disk: number, offset: number, length: number): Promise<Buffer> {
    const rec = await this.record(sourceId, imageId);
    const d = this.diskOf(rec, disk);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > d.capacity) {
      throw new StoreError('OUT_OF_RANGE', `read offset ${offset} length ${length} is outside disk ${disk} (capacity ${d.capacity} bytes)`,
        { fix: 'read within the disk capacity shown by `vmlift image show`' });
    }
    if (length > MAX_READ) throw new StoreError('BAD_LENGTH', `read of ${length} bytes is larger than ${MAX_READ}`);
    if (length === 0) return Buffer.alloc(0);
    const overlay = await this.overlay(rec, disk);
    return this.withIndex(rec, disk, (slots) => readDiskBytes(this.layout, rec.chunkSize, { capacity: d.capacity, slots, overlay }, offset, length));
  }

  async chunkDigests(sourceId: string, imageId: string, disk: number, first: number, count: number): Promise<Buffer> {
    const rec = await this.record(sourceId, imageId);
    const d = this.diskOf(rec, disk);
    const slots = Math.ceil(d.capacity / rec.chunkSize);
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || first < 0 || count < 0 || first > slots) {
      throw new StoreError('OUT_OF_RANGE', `chunks ${first}+${count} are outside disk ${disk} (${slots} chunks)`);
    }
    const n = Math.min(count, slots - first, MAX_READ / SLOT);
    const ov = await this.overlay(rec, disk);
    const out = await this.withIndex(rec, disk, (read) => read(first, n));
    // an overlaid slot has no whole-chunk digest on record: hash its bytes
    for (const i of ov.keys()) {
      if (i < first || i >= first + n) continue;
      const len = Math.min(rec.chunkSize, d.capacity - i * rec.chunkSize);
      const data = await this.slotBytes(rec, out.subarray((i - first) * SLOT, (i - first + 1) * SLOT), len, ov.get(i));
      const digest = data && !isZeroSlot(data) ? await chunkDigest(data) : Buffer.alloc(SLOT);
      digest.copy(out, (i - first) * SLOT);
    }
    return out;
  }

  /** Every non-hole chunk of one disk, in index order, streamed. */
  private async eachChunk(rec: ImageRecord, disk: number, fn: (i: number, hex: string) => Promise<void>): Promise<void> {
    const d = this.diskOf(rec, disk);
    const slots = Math.ceil(d.capacity / rec.chunkSize);
    const per = 16384;
    await this.withIndex(rec, disk, async (read) => {
      for (let first = 0; first < slots; first += per) {
        const n = Math.min(per, slots - first);
        const buf = await read(first, n);
        const todo: number[] = [];
        for (let k = 0; k < n; k++) if (!isZeroSlot(buf.subarray(k * SLOT, (k + 1) * SLOT))) todo.push(k);
        await runLimited(todo, 4, (k) => fn(first + k, buf.toString('hex', k * SLOT, (k + 1) * SLOT)));
      }
    });
  }

  async pin(sourceId: string, imageId: string): Promise<Unpin> {
    await this.record(sourceId, imageId);
    const unpin = await pinImage(this.layout, sourceId, imageId);
    // Removed between the check and the pin: the pin would guard nothing.
    try { await this.record(sourceId, imageId); } catch (e) { await unpin(); throw e; }
    return unpin;
  }

  private async pinned<T>(sourceId: string, imageId: string, fn: (rec: ImageRecord) => Promise<T>): Promise<T> {
    const unpin = await this.pin(sourceId, imageId);
    try {
      return await fn(await this.record(sourceId, imageId));
    } finally {
      await unpin();
    }
  }

  async verify(sourceId: string, imageId: string) {
    return this.pinned(sourceId, imageId, async (rec) => {
      await this.layout.packIndex.refresh();
      const bad: { disk: number; offset: number; reason: string }[] = [];
      let chunks = 0;
      /** Re-hash one chunk file; a bad one is listed by the disk offset it holds. */
      const check = async (disk: number, offset: number, kind: 'chunk' | 'sub-chunk', hex: string): Promise<void> => {
        chunks++;
        let data: Buffer;
        try {
          data = await this.layout.packIndex.read(hex);
        } catch (e) {
          if (bad.length < 1000) bad.push({ disk, offset, reason: `${kind} ${hex} ${e instanceof StoreError && e.code === 'CHUNK_MISSING' ? 'is missing' : `cannot be read: ${(e as Error).message}`}` });
          return;
        }
        if ((await chunkDigest(data)).toString('hex') !== hex && bad.length < 1000) {
          bad.push({ disk, offset, reason: `${kind} ${hex} is corrupt (its content has another digest)` });
        }
      };
      for (const d of rec.disks) {
        const ss = subSize(rec.chunkSize);
        const subChunks = [...await this.overlay(rec, d.disk)].flatMap(([i, m]) => [...m]
          .filter(([, dg]) => !isZeroSlot(dg)).map(([k, dg]) => ({ offset: i * rec.chunkSize + k * ss, hex: dg.toString('hex') })));
        await runLimited(subChunks, 4, ({ offset, hex }) => check(d.disk, offset, 'sub-chunk', hex));
        await this.eachChunk(rec, d.disk, (i, hex) => check(d.disk, i * rec.chunkSize, 'chunk', hex));
      }
      return { ok: bad.length === 0, chunks, bad };
    });
  }

  async export(sourceId: string, imageId: string, disk: number, format: 'raw' | 'qcow2' | 'vmdk', output: string): Promise<void> {
    await this.pinned(sourceId, imageId, async (rec) => {
      const d = this.diskOf(rec, disk);
      const cs = rec.chunkSize;
      const idxPath = join(this.layout.imageDir(sourceId, imageId), indexName(disk));
      const ov = await this.overlay(rec, disk);
      const fh = await open(idxPath, 'r');
      // Slots are read a block at a time (export walks them in order; 4 readers at once).
      const per = 16384;
      const blocks = new Map<number, Promise<Buffer>>();
      const slotBlock = (b: number) => {
        let p = blocks.get(b);
        if (!p) {
          p = (async () => {
            const buf = Buffer.alloc(per * SLOT);
            const { bytesRead } = await fh.read(buf, 0, buf.length, b * per * SLOT);
            buf.fill(0, bytesRead);
            return buf;
          })();
          blocks.set(b, p);
          for (const k of blocks.keys()) if (k < b - 1) blocks.delete(k);
        }
        return p;
      };
      try {
        await exportDisk(output, format, d.capacity, cs, async (i) => {
          const buf = await slotBlock(Math.floor(i / per));
          const slot = buf.subarray((i % per) * SLOT, (i % per + 1) * SLOT);
          return this.slotBytes(rec, slot, Math.min(cs, d.capacity - i * cs), ov.get(i));
        });
      } finally {
        await fh.close();
      }
    });
  }

  async removeImage(sourceId: string, imageId: string): Promise<void> {
    await this.record(sourceId, imageId);
    const pinnedMsg = () => new StoreError('PINNED', `image ${imageId} of source ${sourceId} is in use by an export or verify; try again when it ends`,
      { fix: 'wait for the running export or verify of this image to end, then try again', transient: true });
    if (await livePins(this.layout, sourceId, imageId)) throw pinnedMsg();
    const imagesDir = this.layout.imagesDir(sourceId);
    const dir = this.layout.imageDir(sourceId, imageId);
    const trash = join(imagesDir, `.trash-${imageId}-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      await rename(dir, trash);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new StoreError('NOT_FOUND', `image ${imageId} of source ${sourceId} does not exist`, { fix: 'list the images with `vmlift image ls`' });
      throw e;
    }
    // A pin taken between the check and the rename wins: put the image back.
    if (await livePins(this.layout, sourceId, imageId)) {
      await rename(trash, dir);
      throw pinnedMsg();
    }
    await fsyncDir(imagesDir);
    crashPoint('store:retention');
    await rm(trash, { recursive: true, force: true });
  }

  async applyRetention(sourceId: string, maxImages: number): Promise<string[]> {
    assertId(sourceId, 'source id');
    if (!Number.isInteger(maxImages) || maxImages < 1 || maxImages > 10) {
      throw new StoreError('BAD_RETENTION', `max kept images must be 1-10 (got ${maxImages})`, { fix: 'keep between 1 and 10 images' });
    }
    const ids = await imageIds(this.layout, sourceId);
    const removed: string[] = [];
    // Only images older than the newest `maxImages` go; a pinned one stays until a later run.
    for (const id of ids.slice(0, Math.max(0, ids.length - maxImages))) {
      try {
        await this.removeImage(sourceId, id);
        removed.push(id);
      } catch (e) {
        if (!(e instanceof StoreError && (e.code === 'PINNED' || e.code === 'NOT_FOUND'))) throw e;
      }
    }
    // A sweep walks every chunk file of the store: only when retention made garbage, or an
    // earlier sweep left some within its grace.
    if (removed.length > 0 || await this.sweepOwed()) await this.gc();
    return removed;
  }

  gc(): Promise<GcResult> {
    // A sweep that has not started yet covers every call made before it starts: join it. Queueing one
    // per call made a burst of image deletions wait for as many full sweeps (found by the receiver fuzzer).
    if (this.queuedSweep) return this.queuedSweep;
    const run = this.sweeps.then(() => { this.queuedSweep = null; return this.sweep(); });
    this.queuedSweep = run;
    this.sweeps = run.catch(() => {});
    return run;
  }
  private queuedSweep: Promise<GcResult> | null = null;

  private async sweep(): Promise<GcResult> {
    this.cancelOwedSweep();
    const r = await collectGarbage(this.layout, this.graceMs, this.opts.repackBelow, this.opts.mergeBelow);
    if (r.deferredChunks > 0) {
      await writeFileAtomic(this.layout.gcPending, JSON.stringify({ deferredChunks: r.deferredChunks, at: new Date().toISOString() }));
      this.scheduleOwedSweep();
    } else {
      await rm(this.layout.gcPending, { force: true });
    }
    return r;
  }

  private async sweepOwed(): Promise<boolean> {
    return (await stat(this.layout.gcPending).catch(() => null)) !== null;
  }

  /** Collect the garbage an earlier sweep spared, once its grace has passed, without waiting for a commit. */
  scheduleOwedSweep(): void {
    if (this.closed || this.owedSweep) return;
    this.owedSweep = setTimeout(() => {
      this.owedSweep = null;
      this.gc().catch((e: unknown) => this.opts.onBackgroundError?.(e));
    }, this.graceMs + 250);
    this.owedSweep.unref();
  }

  private cancelOwedSweep(): void {
    if (this.owedSweep) clearTimeout(this.owedSweep);
    this.owedSweep = null;
  }

  async stats(): Promise<StoreStats> {
    let logicalBytes = 0; let images = 0; let sources = 0;
    for (const src of await this.listSources()) {
      sources++;
      for (const img of await this.listImages(src)) { images++; for (const d of img.disks) logicalBytes += d.allocatedBytes; }
    }
    await this.layout.packIndex.refresh();
    const { chunks, bytes: storedBytes, distinctBytes } = this.layout.packIndex.totals();
    return { logicalBytes, storedBytes, distinctBytes, chunks, images, sources, dedupRatio: distinctBytes > 0 ? logicalBytes / distinctBytes : 1 };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.cancelOwedSweep();
    await this.sweeps;
    for (const c of [...this.active.values()]) await c.detach();
    await this.layout.packIndex.closeReaders();
  }
}

export async function openImageStore(root: string, opts: StoreOptions = {}): Promise<ImageStore> {
  const layout = new Layout(root);
  await mkdir(root, { recursive: true });
  let chunkSize: number;
  try {
    const meta = JSON.parse(await readFile(layout.storeJson, 'utf8')) as { version: number; chunkSize: number };
    checkStoreVersion(root, meta.version);
    if (!Number.isInteger(meta.chunkSize)) throw new StoreError('BAD_STORE', `${layout.storeJson} has no valid chunk size`, { fix: 'restore store.json from a backup, or give vmlift a new data folder' });
    chunkSize = meta.chunkSize;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
    if (!Number.isInteger(Math.log2(chunkSize)) || chunkSize < 4096 || chunkSize > 64 << 20) {
      throw new StoreError('BAD_STORE', `chunk size must be a power of two from 4 KiB to 64 MiB (got ${chunkSize})`, { fix: 'choose a power of two from 4 KiB to 64 MiB' });
    }
    await mkdir(layout.packsDir, { recursive: true });
    await mkdir(layout.sourcesDir, { recursive: true });
    await writeFileAtomic(layout.storeJson, JSON.stringify({ version: STORE_VERSION, chunkSize }));
  }
  const store = new Store(root, chunkSize, opts);
  if (await stat(layout.gcPending).catch(() => null)) store.scheduleOwedSweep();
  return store;
}

/** Refuse a store of another format version, naming both versions and the fix. */
export function checkStoreVersion(root: string, version: unknown): void {
  if (version === STORE_VERSION) return;
  const dataDir = dirname(root);
  if (version === 1) {
    throw new StoreError('STORE_VERSION', `the image store ${root} is store format 1 (one file per chunk); this vmlift reads store format ${STORE_VERSION} (pack files)`,
      { fix: `stop the receiver that uses it, then convert it in place with \`vmlift image migrate --data-dir ${dataDir}\` (crash-safe; run it again if it is interrupted), or start over with a new data folder` });
  }
  throw new StoreError('STORE_VERSION', `the image store ${root} is store format ${JSON.stringify(version)}; this vmlift reads store format ${STORE_VERSION}`,
    { fix: typeof version === 'number' && version > STORE_VERSION ? 'run the newer vmlift that wrote this store' : 'restore store.json from a backup, or give vmlift a new data folder' });
}
