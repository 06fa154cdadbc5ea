import { copyFile, constants as fsc, link, mkdir, open, readFile, rename, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { assertId } from '../util/ids.ts';
import { fsyncDir, writeFileAtomic } from '../util/fsync.ts';
import { StoreError, type CommitOptions, type CycleWriter, type DiskSpec, type HeldRanges, type ImageInfo, type Range, type WriteExtentOptions } from './types.ts';
import { indexName, SLOT, type Layout } from './layout.ts';
import { ChunkWriter, fitLength, isZeroSlot, sha256Async, zeroDigest } from './chunks.ts';
import { firstUncovered } from './ranges.ts';
import { coalesce } from '../util/ranges.ts';
import { imageIds, publicInfo, readImageRecord, type ImageRecord } from './images.ts';
import { pidAlive, pinImage } from './pins.ts';
import { RefsJournal } from './refs.ts';
import { compacted, encodeRecords, overlayName, readOverlay, RESET, SUBS, subSize, type Overlay } from './overlay.ts';

interface CycleRecord {
  sourceId: string;
  cycleId: string;
  baseImageId: string | null;
  disks: DiskSpec[];
  chunkSize: number;
  createdAt: string;
}

interface DiskState {
  spec: DiskSpec;
  slots: number;
  idx: FileHandle;
  /** chunk index -> new digest (null = hole), not yet in the working index file. */
  dirty: Map<number, Buffer | null>;
  held: Range[];
  unflushed: Range[];
  /** The slot overlays in effect (overlay.ts), and records not yet in the overlay file. */
  overlay: Overlay;
  overlayPending: { slot: number; sub: number; digest: Buffer | null }[];
  overlayFh: FileHandle;
}

interface CacheEntry {
  ds: DiskState;
  /** Slot and sub-chunk. */
  i: number;
  k: number;
  buf: Buffer;
  /** Changed since last stored. */
  dirty: boolean;
}

function chunkKey(ds: DiskState, i: number): string { return `${ds.spec.disk}:${i}`; }
function subKey(ds: DiskState, i: number, k: number): string { return `${ds.spec.disk}:${i}:${k}`; }

/** Bound of the write-back cache of partially written sub-chunks. */
const CACHE_BYTES = 64 << 20;

export interface CycleEnv {
  layout: Layout;
  chunkSize: number;
  /** Called when the writer is done (commit or abort) so the store forgets it. */
  onClose: (w: Cycle) => void;
}

const DISKS_FIX = 'number the disks 0..n-1 and give their sizes in bytes';

export function validateDisks(disks: unknown): DiskSpec[] {
  if (!Array.isArray(disks) || disks.length === 0) throw new StoreError('BAD_DISK', 'a cycle needs at least one disk', { fix: DISKS_FIX });
  const seen = new Set<number>();
  for (const d of disks as DiskSpec[]) {
    if (!Number.isSafeInteger(d?.disk) || d.disk < 0 || d.disk >= disks.length || seen.has(d.disk)) {
      throw new StoreError('BAD_DISK', `disk numbers must be 0..${disks.length - 1}, each once (got ${JSON.stringify(d?.disk)})`, { fix: DISKS_FIX });
    }
    if (!Number.isSafeInteger(d.capacity) || d.capacity <= 0 || d.capacity % 512 !== 0) {
      throw new StoreError('BAD_DISK', `disk ${d.disk}: capacity must be a positive multiple of 512 bytes (got ${JSON.stringify(d.capacity)})`, { fix: DISKS_FIX });
    }
    seen.add(d.disk);
  }
  return [...(disks as DiskSpec[])].sort((a, b) => a.disk - b.disk)
    .map((d) => ({ disk: d.disk, capacity: d.capacity, ...(d.label !== undefined ? { label: String(d.label) } : {}) }));
}

function toDigest(v: Uint8Array | string): Buffer | null {
  if (typeof v === 'string') return /^[0-9a-fA-F]{64}$/.test(v) ? Buffer.from(v, 'hex') : null;
  return v.length === 32 ? Buffer.from(v.buffer, v.byteOffset, 32) : null;
}

/** Parse held.log: JSON lines {d, o, l}; a torn last line (crash mid-append) is ignored. */
function parseHeld(text: string): Map<number, Range[]> {
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

export class Cycle implements CycleWriter {
  readonly chunkSize: number;
  private readonly subSize: number;
  readonly sourceId: string;
  readonly cycleId: string;
  readonly disks: readonly DiskSpec[];
  readonly baseImageId: string | null;
  private readonly dir: string;
  private readonly createdAt: string;
  private readonly state = new Map<number, DiskState>();
  private readonly chains = new Map<string, Promise<void>>();
  private readonly inflight = new Set<Promise<void>>();
  private readonly cache = new Map<string, CacheEntry>();
  private cacheBytes = 0;
  private flushChain: Promise<void> = Promise.resolve();
  private status: 'open' | 'closing' | 'closed' = 'open';
  private chunks: ChunkWriter;

  private constructor(private readonly env: CycleEnv, rec: CycleRecord, dir: string,
    private readonly refs: RefsJournal, private readonly heldFh: FileHandle) {
    this.chunkSize = rec.chunkSize;
    this.subSize = subSize(rec.chunkSize);
    this.sourceId = rec.sourceId;
    this.cycleId = rec.cycleId;
    this.disks = Object.freeze(rec.disks.map((d) => Object.freeze({ ...d })));
    this.baseImageId = rec.baseImageId;
    this.createdAt = rec.createdAt;
    this.dir = dir;
    this.chunks = new ChunkWriter(env.layout, (hex) => this.refs.note(hex));
  }

  get key(): string { return `${this.sourceId}/${this.cycleId}`; }
  get isOpen(): boolean { return this.status === 'open'; }
  /** Chunk files this writer created (for tests and stats). */
  get newChunks(): number { return this.chunks.newChunks; }

  /** Begin a new cycle, or resume the open one with the same ids. */
  static async begin(env: CycleEnv, opts: { sourceId: string; cycleId: string; disks: DiskSpec[]; baseImageId?: string | null }): Promise<Cycle> {
    const { layout } = env;
    const src = assertId(opts.sourceId, 'source id');
    const cid = assertId(opts.cycleId, 'cycle id');
    const disks = validateDisks(opts.disks);
    const dir = layout.cycleDir(src, cid);
    await mkdir(layout.cyclesDir(src), { recursive: true });
    await mkdir(layout.imagesDir(src), { recursive: true });

    let rec: CycleRecord | null = null;
    try {
      rec = JSON.parse(await readFile(join(dir, 'cycle.json'), 'utf8')) as CycleRecord;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (rec) {
      const same = rec.disks.length === disks.length && rec.disks.every((d, i) => d.disk === disks[i]!.disk && d.capacity === disks[i]!.capacity);
      if (!same) {
        throw new StoreError('CYCLE_MISMATCH', `cycle ${cid} of source ${src} is open with disks ${JSON.stringify(rec.disks.map((d) => [d.disk, d.capacity]))}; `
          + `resume it with the same disks or abort it`, { fix: 'resume the cycle with the disks it was begun with, or abort it' });
      }
      if (opts.baseImageId !== undefined && opts.baseImageId !== rec.baseImageId) {
        throw new StoreError('CYCLE_MISMATCH', `cycle ${cid} of source ${src} is open on base image ${rec.baseImageId ?? 'none'}, not ${opts.baseImageId ?? 'none'}`,
          { fix: 'resume the cycle on the base image it was begun on, or abort it' });
      }
      await claimOwner(dir, src, cid);
    } else {
      rec = await createCycle(env, src, cid, disks, opts.baseImageId, dir);
    }
    // A crash may have left a torn last line in either journal: end it, so that what is appended
    // now starts on a line of its own.
    const refsFh = await open(join(dir, 'refs.log'), 'a', 0o600);
    await refsFh.write('\n');
    const refs = new RefsJournal(refsFh);
    let heldFh: FileHandle | undefined;
    const c = await (async () => {
      heldFh = await open(join(dir, 'held.log'), 'a+', 0o600);
      const heldText = await readFile(join(dir, 'held.log'), 'utf8');
      if (heldText.length > 0 && !heldText.endsWith('\n')) { await heldFh.write('\n'); await heldFh.sync(); }
      const held = parseHeld(heldText);
      const cyc = new Cycle(env, rec, dir, refs, heldFh);
      for (const d of rec.disks) {
        const idx = await open(join(dir, indexName(d.disk)), 'r+');
        const overlay = await readOverlay(join(dir, overlayName(d.disk)));
        const overlayFh = await open(join(dir, overlayName(d.disk)), 'a', 0o600);
        cyc.state.set(d.disk, {
          spec: d, slots: Math.ceil(d.capacity / rec.chunkSize), idx, dirty: new Map(),
          held: coalesce(held.get(d.disk) ?? []), unflushed: [], overlay, overlayPending: [], overlayFh,
        });
      }
      return cyc;
    })().catch(async (e) => {
      await refs.close().catch(() => {});
      await heldFh?.close();
      throw e;
    });
    return c;
  }

  async writeExtent(disk: number, offset: number, length: number, data: Uint8Array | null, opts?: WriteExtentOptions): Promise<void> {
    // Everything up to the chain registration runs synchronously, so overlapping calls queue in call order.
    if (this.status !== 'open') {
      throw new StoreError('CYCLE_CLOSED', `cycle ${this.cycleId} of source ${this.sourceId} is ${this.status === 'closing' ? 'being committed or aborted' : 'closed'}`,
        { fix: 'begin (or resume) the cycle again', transient: true });
    }
    const ds = this.state.get(disk);
    if (!ds) throw new StoreError('BAD_DISK', `source ${this.sourceId} cycle ${this.cycleId} has no disk ${disk} (disks: ${[...this.state.keys()].join(', ')})`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > ds.spec.capacity) {
      throw new StoreError('OUT_OF_RANGE', `extent offset ${offset} length ${length} is outside disk ${disk} (capacity ${ds.spec.capacity} bytes)`,
        { fix: 'begin the cycle with the disk\'s current capacity' });
    }
    if (data !== null && data.length !== length) {
      throw new StoreError('BAD_LENGTH', `extent at offset ${offset} of disk ${disk} says length ${length} but carries ${data.length} bytes`);
    }
    if (length === 0) return;
    const cs = this.chunkSize;
    const pieces: Promise<void>[] = [];
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    const given = opts?.sha256 !== undefined && first === last ? toDigest(opts.sha256) : null;
    for (let i = first; i <= last; i++) {
      const cStart = i * cs;
      const cLen = Math.min(cs, ds.spec.capacity - cStart);
      const s = Math.max(offset, cStart);
      const e = Math.min(offset + length, cStart + cLen);
      const piece = data ? data.subarray(s - offset, e - offset) : null;
      pieces.push(this.chain(`${disk}:${i}`, () => this.applyPiece(ds, i, cLen, s - cStart, e - s, piece, given)));
    }
    const op = Promise.all(pieces).then(() => { ds.unflushed.push({ offset, length }); });
    this.track(op);
    await op;
  }

  private async currentSlot(ds: DiskState, i: number): Promise<Buffer | null> {
    if (ds.dirty.has(i)) return ds.dirty.get(i)!;
    const b = Buffer.alloc(SLOT);
    const { bytesRead } = await ds.idx.read(b, 0, SLOT, i * SLOT);
    return bytesRead === SLOT && !isZeroSlot(b) ? b : null;
  }

  /** Queue `fn` behind earlier work on the same chunk (call order for overlapping writes). */
  private chain(key: string, fn: () => Promise<void>): Promise<void> {
    const prev = this.chains.get(key);
    const p = prev ? prev.then(fn, fn) : fn();
    this.chains.set(key, p);
    const drop = () => { if (this.chains.get(key) === p) this.chains.delete(key); };
    p.then(drop, drop);
    return p;
  }

  private track(p: Promise<unknown>): void {
    const t = p.then(() => {}, () => {});
    this.inflight.add(t);
    void t.then(() => this.inflight.delete(t));
  }

  private async applyPiece(ds: DiskState, i: number, cLen: number, at: number, len: number, piece: Uint8Array | null, given: Buffer | null): Promise<void> {
    if (at === 0 && len === cLen) {
      for (let k = 0; k < SUBS; k++) this.dropCached(subKey(ds, i, k));
      let digest: Buffer | null = null;
      if (piece) {
        digest = given ?? await sha256Async(piece);
        if (digest.equals(zeroDigest(cLen))) digest = null;
        else await this.chunks.put(digest.toString('hex'), piece);
      }
      ds.dirty.set(i, digest);
      if (ds.overlay.has(i)) {
        // the whole chunk is new: the slot's sub-chunks no longer apply
        ds.overlay.delete(i);
        ds.overlayPending.push({ slot: i, sub: RESET, digest: null });
      }
      return;
    }
    // Partial write: only the sub-chunks it touches are stored (overlay.ts), not the whole chunk.
    // A sub-chunk written in part is patched in a bounded write-back cache, so a run of small writes
    // into it stores it once (at eviction or flush).
    const ss = this.subSize;
    for (let k = Math.floor(at / ss); k * ss < at + len; k++) {
      const sStart = k * ss;
      const sEnd = Math.min(sStart + ss, cLen);
      const ps = Math.max(at, sStart);
      const pe = Math.min(at + len, sEnd);
      const part = piece ? piece.subarray(ps - at, pe - at) : null;
      const key = subKey(ds, i, k);
      if (ps === sStart && pe === sEnd) {
        this.dropCached(key);
        // the caller's digest names this sub-chunk when the extent is exactly this sub-chunk
        await this.storeSub(ds, i, k, part, sEnd - sStart, ps === at && pe === at + len ? given : null);
        continue;
      }
      let entry = this.cache.get(key);
      if (entry) {
        this.cache.delete(key); // re-insert: Map order = least recently used first
        this.cache.set(key, entry);
      } else {
        entry = { ds, i, k, buf: await this.currentSub(ds, i, sStart, sEnd), dirty: false };
        this.cache.set(key, entry);
        this.cacheBytes += entry.buf.length;
      }
      if (part) entry.buf.set(part, ps - sStart);
      else entry.buf.fill(0, ps - sStart, pe - sStart);
      entry.dirty = true;
    }
    this.evict();
  }

  /** Store sub-chunk k of slot i (`data` null = zeros) and note it in the overlay. */
  private async storeSub(ds: DiskState, i: number, k: number, data: Uint8Array | null, len: number, given: Buffer | null = null): Promise<void> {
    let digest = zeroDigest(len);
    if (data) digest = given ?? await sha256Async(data);
    const hole = digest.equals(zeroDigest(len));
    if (!hole) await this.chunks.put(digest.toString('hex'), data!);
    const d = hole ? Buffer.alloc(32) : digest;
    let m = ds.overlay.get(i);
    if (!m) ds.overlay.set(i, (m = new Map()));
    m.set(k, d);
    ds.overlayPending.push({ slot: i, sub: k, digest: d });
    // Every sub-chunk of the slot is in the overlay: its chunk is no longer read, let it go (gc).
    const cLen = Math.min(this.chunkSize, ds.spec.capacity - i * this.chunkSize);
    if (m.size === Math.ceil(cLen / this.subSize) && ds.dirty.get(i) !== null) ds.dirty.set(i, null);
  }

  /** The current bytes [sStart, sEnd) of slot i: its overlay sub-chunk, else that part of its chunk. */
  private async currentSub(ds: DiskState, i: number, sStart: number, sEnd: number): Promise<Buffer> {
    const sub = ds.overlay.get(i)?.get(sStart / this.subSize);
    if (sub) return isZeroSlot(sub) ? Buffer.alloc(sEnd - sStart) : fitLength(await this.chunks.read(sub.toString('hex')), sEnd - sStart);
    const cur = await this.currentSlot(ds, i);
    if (!cur) return Buffer.alloc(sEnd - sStart);
    return this.chunks.readRange(cur.toString('hex'), sStart, sEnd - sStart);
  }

  private dropCached(key: string): void {
    const e = this.cache.get(key);
    if (e) { this.cache.delete(key); this.cacheBytes -= e.buf.length; }
  }

  /** Hash and store a cached sub-chunk; runs in its chunk's chain. */
  private async materialize(e: CacheEntry): Promise<void> {
    if (!e.dirty) return;
    e.dirty = false;
    await this.storeSub(e.ds, e.i, e.k, e.buf, e.buf.length);
  }

  private evict(): void {
    while (this.cacheBytes > CACHE_BYTES && this.cache.size > 1) {
      const [key, e] = this.cache.entries().next().value as [string, CacheEntry];
      this.cache.delete(key);
      this.cacheBytes -= e.buf.length;
      this.track(this.chain(chunkKey(e.ds, e.i), () => this.materialize(e)));
    }
  }

  flush(): Promise<void> {
    const run = this.flushChain.then(() => this.doFlush());
    this.flushChain = run.catch(() => {});
    return run;
  }

  private async doFlush(): Promise<void> {
    await Promise.all([...this.inflight]);
    const disks = [...this.state.values()];
    const ranges = disks.map((ds) => ds.unflushed.splice(0));
    let snaps: { ds: DiskState; dirty: Map<number, Buffer | null>; ranges: Range[] }[] = [];
    try {
      await Promise.all([...this.cache.values()].filter((e) => e.dirty).map((e) => this.chain(chunkKey(e.ds, e.i), () => this.materialize(e))));
      snaps = disks.map((ds, k) => ({ ds, dirty: new Map(ds.dirty), ranges: ranges[k]! }));
      const records = disks.map((ds) => ds.overlayPending.splice(0));
      // Chunks before the overlay and index that name them, those before the journal that claims the ranges.
      try {
        await this.chunks.sync();
        await Promise.all(disks.map(async (ds, k) => {
          if (records[k]!.length === 0) return;
          await ds.overlayFh.write(encodeRecords(records[k]!));
          await ds.overlayFh.sync();
        }));
      } catch (e) {
        disks.forEach((ds, k) => ds.overlayPending.unshift(...records[k]!));
        throw e;
      }
      const zero = Buffer.alloc(SLOT);
      await Promise.all(snaps.map(async ({ ds, dirty }) => {
        if (dirty.size === 0) return;
        const idxs = [...dirty.keys()].sort((a, b) => a - b);
        for (let k = 0; k < idxs.length;) {
          let j = k + 1;
          while (j < idxs.length && idxs[j] === idxs[j - 1]! + 1 && j - k < 8192) j++;
          const buf = Buffer.concat(idxs.slice(k, j).map((i) => dirty.get(i) ?? zero));
          await ds.idx.write(buf, 0, buf.length, idxs[k]! * SLOT);
          k = j;
        }
        await ds.idx.sync();
      }));
      const lines: string[] = [];
      for (const { ds, ranges } of snaps) for (const r of coalesce(ranges)) lines.push(JSON.stringify({ d: ds.spec.disk, o: r.offset, l: r.length }));
      if (lines.length > 0) {
        await this.heldFh.write(`${lines.join('\n')}\n`);
        await this.heldFh.sync();
      }
    } catch (e) {
      disks.forEach((ds, k) => ds.unflushed.unshift(...ranges[k]!));
      throw e;
    }
    for (const { ds, dirty, ranges } of snaps) {
      if (ranges.length > 0) ds.held = coalesce(ds.held.concat(ranges));
      for (const [i, v] of dirty) if (ds.dirty.get(i) === v) ds.dirty.delete(i);
    }
  }

  async held(): Promise<HeldRanges[]> {
    return [...this.state.values()].map((ds) => ({ disk: ds.spec.disk, ranges: ds.held.map((r) => ({ ...r })) }));
  }

  async commit(opts: CommitOptions = {}): Promise<ImageInfo> {
    this.assertOpen();
    this.status = 'closing';
    try {
      await this.flush();
      this.checkExpected(opts);
      const info = await this.publish(opts.meta ?? {});
      await this.closeHandles();
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

  private checkExpected(opts: CommitOptions): void {
    for (const exp of opts.expected ?? []) {
      const ds = this.state.get(exp.disk);
      if (!ds) throw new StoreError('BAD_DISK', `commit expects disk ${exp.disk}, but cycle ${this.cycleId} of source ${this.sourceId} has no such disk`);
      const gap = firstUncovered(exp.ranges, ds.held);
      if (gap) {
        throw new StoreError('MISSING_EXTENTS', `cycle ${this.cycleId} of source ${this.sourceId}: disk ${exp.disk} is missing bytes `
          + `${gap.offset}-${gap.offset + gap.length - 1} (${gap.length} bytes at offset ${gap.offset}) that the sender claims to have sent`,
        { fix: 'resume the cycle and send the missing extents, then commit again' });
      }
    }
  }

  private async publish(meta: Record<string, unknown>): Promise<ImageInfo> {
    const layout = this.env.layout;
    const imagesDir = layout.imagesDir(this.sourceId);
    // A crash between publishing the image and removing the cycle folder: the commit already happened.
    for (const id of (await imageIds(layout, this.sourceId)).reverse()) {
      const r = await readImageRecord(layout, this.sourceId, id).catch(() => null);
      if (r && r.cycleId === this.cycleId && r.committedAt >= this.createdAt) return publicInfo(r);
      if (r && r.committedAt < this.createdAt) break;
    }
    const disks = [];
    for (const ds of this.state.values()) disks.push({ ...ds.spec, ...(await indexStats(ds, this.chunkSize)) });
    const tmp = join(imagesDir, `.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
    await mkdir(tmp);
    try {
      for (const ds of this.state.values()) {
        await link(join(this.dir, indexName(ds.spec.disk)), join(tmp, indexName(ds.spec.disk)));
        await link(join(this.dir, overlayName(ds.spec.disk)), join(tmp, overlayName(ds.spec.disk)));
      }
      const lastSeqPath = join(layout.sourceDir(this.sourceId), 'last-seq');
      const lastSeq = Number((await readFile(lastSeqPath, 'utf8').catch(() => '0')).trim()) || 0;
      const ids = await imageIds(layout, this.sourceId);
      let seq = Math.max(lastSeq, ids.length ? Number(ids[ids.length - 1]) : 0) + 1;
      for (;;) {
        const rec: ImageRecord = {
          sourceId: this.sourceId, imageId: String(seq), seq, committedAt: new Date().toISOString(),
          cycleId: this.cycleId, baseImageId: this.baseImageId, disks, meta, chunkSize: this.chunkSize,
        };
        const fh = await open(join(tmp, 'image.json'), 'w', 0o600);
        try { await fh.writeFile(JSON.stringify(rec, null, 1)); await fh.sync(); } finally { await fh.close(); }
        await fsyncDir(tmp);
        try {
          await rename(tmp, join(imagesDir, String(seq)));
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          if (code === 'ENOTEMPTY' || code === 'EEXIST') { seq++; continue; }
          throw e;
        }
        await fsyncDir(imagesDir);
        await writeFileAtomic(lastSeqPath, String(seq));
        return publicInfo(rec);
      }
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    }
  }

  async abort(): Promise<void> {
    if (this.status === 'closed') return;
    this.status = 'closing';
    await Promise.all([...this.inflight]);
    await this.flushChain;
    this.cache.clear();
    this.cacheBytes = 0;
    await this.chunks.discard();
    await this.closeHandles();
    await rm(this.dir, { recursive: true, force: true });
    await fsyncDir(this.env.layout.cyclesDir(this.sourceId)).catch(() => {});
    this.status = 'closed';
    this.env.onClose(this);
  }

  /** Release files without committing or aborting (the cycle stays open on disk, resumable). */
  async detach(): Promise<void> {
    if (this.status === 'closed') return;
    this.status = 'closing';
    await Promise.all([...this.inflight]);
    await this.flush().catch(() => {});
    await this.closeHandles();
    await rm(join(this.dir, 'owner'), { force: true });
    this.status = 'closed';
    this.env.onClose(this);
  }

  private assertOpen(): void {
    if (this.status !== 'open') throw new StoreError('CYCLE_CLOSED', `cycle ${this.cycleId} of source ${this.sourceId} is no longer open`, { fix: 'begin (or resume) the cycle again', transient: true });
  }

  private async closeHandles(): Promise<void> {
    for (const ds of this.state.values()) {
      await ds.idx.close().catch(() => {});
      await ds.overlayFh.close().catch(() => {});
    }
    await this.heldFh.close().catch(() => {});
    await this.refs.close().catch(() => {});
  }
}

/** Non-hole chunks and their bytes, streaming the index (bounded memory). */
async function indexStats(ds: DiskState, cs: number): Promise<{ allocatedBytes: number; chunkCount: number }> {
  const per = 32768;
  const buf = Buffer.alloc(per * SLOT);
  let chunkCount = 0; let allocatedBytes = 0;
  for (let i = 0; i < ds.slots; i += per) {
    const n = Math.min(per, ds.slots - i);
    const { bytesRead } = await ds.idx.read(buf, 0, n * SLOT, i * SLOT);
    for (let k = 0; k * SLOT < bytesRead; k++) {
      const subs = ds.overlay.get(i + k);
      if (!isZeroSlot(buf.subarray(k * SLOT, (k + 1) * SLOT)) || (subs && [...subs.values()].some((d) => !isZeroSlot(d)))) {
        chunkCount++;
        allocatedBytes += Math.min(cs, ds.spec.capacity - (i + k) * cs);
      }
    }
  }
  return { allocatedBytes, chunkCount };
}

async function claimOwner(dir: string, src: string, cid: string): Promise<void> {
  const ownerPath = join(dir, 'owner');
  const pid = Number((await readFile(ownerPath, 'utf8').catch(() => '')).trim());
  if (pid && pid !== process.pid && pidAlive(pid)) {
    throw new StoreError('CYCLE_BUSY', `cycle ${cid} of source ${src} is being written by process ${pid}`,
      { fix: `wait for process ${pid} to end: one receiver at a time may serve a data folder`, transient: true });
  }
  await writeFile(ownerPath, String(process.pid));
}

async function createCycle(env: CycleEnv, src: string, cid: string, disks: DiskSpec[], baseOpt: string | null | undefined, dir: string): Promise<CycleRecord> {
  const { layout, chunkSize } = env;
  let base: ImageRecord | null = null;
  let unpin: (() => Promise<void>) | null = null;
  try {
    if (baseOpt === undefined) {
      const ids = await imageIds(layout, src);
      for (let k = ids.length - 1; k >= 0 && !base; k--) {
        unpin = await pinImage(layout, src, ids[k]!);
        try { base = await readImageRecord(layout, src, ids[k]!); } catch (e) {
          await unpin(); unpin = null;
          if (!(e instanceof StoreError && e.code === 'NOT_FOUND')) throw e;
        }
      }
    } else if (baseOpt !== null) {
      unpin = await pinImage(layout, src, baseOpt);
      base = await readImageRecord(layout, src, baseOpt);
    }
    if (base && base.chunkSize !== chunkSize) throw new StoreError('BAD_STORE', `image ${base.imageId} uses chunk size ${base.chunkSize}, the store ${chunkSize}`);
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'owner'), String(process.pid));
    for (const d of disks) {
      const target = join(dir, indexName(d.disk));
      const fromBase = base?.disks.some((b) => b.disk === d.disk);
      if (base && fromBase) {
        await copyFile(join(layout.imageDir(src, base.imageId), indexName(d.disk)), target, fsc.COPYFILE_FICLONE);
      }
      const fh = await open(target, fromBase ? 'r+' : 'w', 0o600);
      try {
        await fh.truncate(Math.ceil(d.capacity / chunkSize) * SLOT);
        await fh.sync();
      } finally { await fh.close(); }
      // the base's overlay, one record per live sub-chunk (slots beyond a shrunk disk dropped)
      const slots = Math.ceil(d.capacity / chunkSize);
      const ov = base && fromBase ? await readOverlay(join(layout.imageDir(src, base.imageId), overlayName(d.disk))) : new Map() as Overlay;
      for (const slot of [...ov.keys()]) if (slot >= slots) ov.delete(slot);
      await writeFileAtomic(join(dir, overlayName(d.disk)), compacted(ov));
    }
    const rec: CycleRecord = { sourceId: src, cycleId: cid, baseImageId: base?.imageId ?? null, disks, chunkSize, createdAt: new Date().toISOString() };
    await writeFileAtomic(join(dir, 'cycle.json'), JSON.stringify(rec));
    await fsyncDir(layout.cyclesDir(src));
    return rec;
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  } finally {
    await unpin?.();
  }
}

