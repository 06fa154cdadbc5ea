import { checkClaim } from './claims.ts';
import { fitLength, isZeroSlot, chunkDigest, zeroDigest, type ChunkWriter } from './chunks.ts';
import { StoreError } from './types.ts';
import { SUBS, subSize } from './overlay.ts';
import type { DiskJournals } from './journals.ts';
import { WriteChain } from './write-chain.ts';
import { SubChunkCache, type CachedSub } from './sub-chunk-cache.ts';
import type { Range } from '../model/ranges.ts';

/**
 * Applies extents to the disks of an open cycle, one chunk's part at a time, in call order per
 * chunk (write-chain.ts): a whole chunk becomes a chunk file named in the working index; a partial
 * write stores only the sub-chunks it touches (overlay.ts), and a sub-chunk it covers only in part
 * is patched in the write-back cache (sub-chunk-cache.ts) until it is evicted or flushed.
 * What reaches the journals becomes durable at the next flush (journals.ts).
 */
export class ExtentWriter {
  private readonly chain = new WriteChain();
  private readonly cache: SubChunkCache;
  /**
   * Entries evicted from the cache whose store is queued in their chunk's chain. A write queued
   * before that store finds its sub-chunk here (else it would read the bytes from before the
   * evicted patch), and one that replaces the sub-chunk whole cancels the store (else it would land
   * after the newer bytes).
   */
  private readonly leaving = new Map<string, CachedSub>();
  /**
   * Buffers of evicted entries once stored (nothing else holds them then), for the next sub-chunks
   * read: an incremental's scattered changes otherwise allocate a new 64 KiB buffer each, and the
   * external memory drives V8's collections (docs/store.md, "Incremental cycles on the receiver").
   */
  private readonly spare: Buffer[] = [];
  private readonly subSize: number;

  constructor(private readonly chunkSize: number, private readonly chunks: ChunkWriter,
    private readonly disks: ReadonlyMap<number, DiskJournals>, cacheBytes?: number) {
    this.subSize = subSize(chunkSize);
    this.cache = new SubChunkCache(cacheBytes);
  }

  /**
   * Apply `length` bytes at `offset` of `ds` (`data` null = zeros; the caller checked the bounds).
   * Each chunk's part is queued synchronously, so overlapping calls apply in call order. `given`:
   * the caller's SHA-256 of `data`, used when it names one whole chunk or sub-chunk. `check`: `given`
   * is a claim to check against `data` before anything is stored (types.ts, WriteExtentOptions).
   */
  write(ds: DiskJournals, offset: number, length: number, data: Uint8Array | null, given: Uint8Array | string | undefined, check = false): Promise<void> {
    const cs = this.chunkSize;
    const pieces: Promise<void>[] = [];
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    const digest = given !== undefined && first === last ? toDigest(given) : null;
    // A claim is checked while its chunk is stored when the extent is one whole chunk; else first, whole.
    let claimChecked: Promise<void> | null = null;
    let claimInPut = false;
    if (check && data) {
      const claim = given === undefined ? null : toDigest(given);
      if (!claim) return Promise.reject(new StoreError('BAD_DIGEST', `extent at offset ${offset} of disk ${ds.spec.disk}: no 32-byte digest to check its bytes against`));
      claimInPut = isWholeChunk(cs, ds.spec.capacity, offset, length);
      if (!claimInPut) {
        claimChecked = checkClaim(data, claim);
        claimChecked.catch(() => undefined);
      }
    }
    for (let i = first; i <= last; i++) {
      const cStart = i * cs;
      const cLen = Math.min(cs, ds.spec.capacity - cStart);
      const s = Math.max(offset, cStart);
      const e = Math.min(offset + length, cStart + cLen);
      const piece = data ? data.subarray(s - offset, e - offset) : null;
      const apply = () => this.applyPiece(ds, i, cLen, s - cStart, e - s, piece, digest, claimInPut);
      pieces.push(this.chain.run(chunkKey(ds.spec.disk, i), claimChecked ? () => claimChecked.then(apply) : apply));
    }
    const range: Range = { offset, length };
    const op = Promise.all(pieces).then(() => { ds.noteWritten(range); });
    this.chain.track(op);
    return op;
  }

  /** Settles when every write and store started so far has settled. */
  settled(): Promise<void> { return this.chain.settled(); }

  /** Store every cached sub-chunk patched since it was last stored (each in its chunk's turn). */
  async storeCached(): Promise<void> {
    await Promise.all(this.cache.dirty().map((e) => this.chain.run(chunkKey(e.disk, e.slot), () => this.materialize(e))));
  }

  /** Forget the cached sub-chunks (the cycle is aborted). */
  discardCached(): void { this.cache.clear(); this.leaving.clear(); this.spare.length = 0; }

  /** `unchecked`: `given` is the sender's claim for this whole chunk, checked as it is stored. */
  private async applyPiece(ds: DiskJournals, i: number, cLen: number, at: number, len: number, piece: Uint8Array | null, given: Buffer | null, unchecked = false): Promise<void> {
    const disk = ds.spec.disk;
    if (at === 0 && len === cLen) {
      // A refused claim must leave the slot as it was: with sub-chunks of it cached or leaving the
      // cache (patched, not stored), or a claim of all zeros, check it before they are dropped.
      if (unchecked && piece && (this.patchedUnstored(disk, i) || given!.equals(zeroDigest(cLen)))) {
        await checkClaim(piece, given!);
        unchecked = false;
      }
      for (let k = 0; k < SUBS; k++) { this.cache.drop(disk, i, k); this.leaving.delete(subKey(disk, i, k)); }
      let digest: Buffer | null = null;
      if (piece) {
        digest = given ?? await chunkDigest(piece);
        if (digest.equals(zeroDigest(cLen))) digest = null;
        else if (unchecked) await this.chunks.putChecked(digest.toString('hex'), piece, digest);
        else await this.chunks.put(digest.toString('hex'), piece);
      }
      ds.index.set(i, digest);
      ds.overlay.resetSlot(i); // the whole chunk is new: the slot's sub-chunks no longer apply
      return;
    }
    const ss = this.subSize;
    for (let k = Math.floor(at / ss); k * ss < at + len; k++) {
      const sStart = k * ss;
      const sEnd = Math.min(sStart + ss, cLen);
      const ps = Math.max(at, sStart);
      const pe = Math.min(at + len, sEnd);
      const part = piece ? piece.subarray(ps - at, pe - at) : null;
      if (ps === sStart && pe === sEnd) {
        this.cache.drop(disk, i, k);
        this.leaving.delete(subKey(disk, i, k));
        // the caller's digest names this sub-chunk when the extent is exactly this sub-chunk
        await this.storeSub(ds, i, k, part, sEnd - sStart, ps === at && pe === at + len ? given : null);
        continue;
      }
      let entry = this.cache.get(disk, i, k) ?? this.readopt(disk, i, k);
      if (!entry) {
        entry = { disk, slot: i, sub: k, buf: await this.currentSub(ds, i, sStart, sEnd), dirty: false };
        this.cache.add(entry);
      }
      if (part) entry.buf.set(part, ps - sStart);
      else entry.buf.fill(0, ps - sStart, pe - sStart);
      entry.dirty = true;
    }
    for (const e of this.cache.evict()) {
      this.leaving.set(subKey(e.disk, e.slot, e.sub), e);
      this.chain.track(this.chain.run(chunkKey(e.disk, e.slot), () => this.storeLeaving(e)));
    }
  }

  /** Whether a sub-chunk of slot i is patched and not stored yet (cached, or evicted with its store queued). */
  private patchedUnstored(disk: number, slot: number): boolean {
    if (this.cache.holdsSlot(disk, slot, SUBS)) return true;
    for (let k = 0; k < SUBS; k++) if (this.leaving.has(subKey(disk, slot, k))) return true;
    return false;
  }

  /** An evicted entry back in the cache, when its store has not run yet (it then stores nothing). */
  private readopt(disk: number, slot: number, sub: number): CachedSub | undefined {
    const key = subKey(disk, slot, sub);
    const e = this.leaving.get(key);
    if (!e) return undefined;
    this.leaving.delete(key);
    this.cache.add(e);
    return e;
  }

  /** Store an evicted entry, unless a later write took it back or replaced its sub-chunk. */
  private async storeLeaving(e: CachedSub): Promise<void> {
    const key = subKey(e.disk, e.slot, e.sub);
    if (this.leaving.get(key) !== e) return;
    this.leaving.delete(key);
    await this.materialize(e);
    if (e.buf.length === this.subSize && this.spare.length < SPARE_BUFFERS) this.spare.push(e.buf);
  }

  /** Store sub-chunk k of slot i (`data` null = zeros) and note it in the overlay. */
  private async storeSub(ds: DiskJournals, i: number, k: number, data: Uint8Array | null, len: number, given: Buffer | null = null): Promise<void> {
    let digest = zeroDigest(len);
    if (data) digest = given ?? await chunkDigest(data);
    const hole = digest.equals(zeroDigest(len));
    if (!hole) await this.chunks.put(digest.toString('hex'), data!);
    const subs = ds.overlay.setSub(i, k, hole ? Buffer.alloc(32) : digest);
    // Every sub-chunk of the slot is in the overlay: its chunk is no longer read, let it go (gc).
    const cLen = Math.min(this.chunkSize, ds.spec.capacity - i * this.chunkSize);
    if (subs === Math.ceil(cLen / this.subSize)) ds.index.set(i, null);
  }

  /** The current bytes [sStart, sEnd) of slot i: its overlay sub-chunk, else that part of its chunk. */
  private async currentSub(ds: DiskJournals, i: number, sStart: number, sEnd: number): Promise<Buffer> {
    const len = sEnd - sStart;
    const into = len === this.subSize ? this.spare.pop() : undefined;
    const sub = ds.overlay.overlay.get(i)?.get(sStart / this.subSize);
    // a sub-chunk file read as the length it fills (cut or zero-padded past its end)
    if (sub && !isZeroSlot(sub)) return this.chunks.readRange(sub.toString('hex'), 0, len, into);
    const cur = sub ? null : await ds.index.get(i);
    if (cur) return this.chunks.readRange(cur.toString('hex'), sStart, len, into);
    return into ? into.fill(0) : Buffer.alloc(len);
  }

  /** Hash and store a cached sub-chunk; runs in its chunk's chain. */
  private async materialize(e: CachedSub): Promise<void> {
    if (!e.dirty) return;
    e.dirty = false;
    await this.storeSub(this.disks.get(e.disk)!, e.slot, e.sub, e.buf, e.buf.length);
  }
}

/** Spare sub-chunk buffers kept (1 MiB at 64 KiB sub-chunks). */
const SPARE_BUFFERS = 16;

/** Whether [offset, offset + length) of a disk of `capacity` bytes is exactly one whole chunk (the last one may be short). */
export function isWholeChunk(chunkSize: number, capacity: number, offset: number, length: number): boolean {
  return offset % chunkSize === 0 && length > 0 && length === Math.min(chunkSize, capacity - offset);
}

function chunkKey(disk: number, slot: number): string { return `${disk}:${slot}`; }
function subKey(disk: number, slot: number, sub: number): string { return `${disk}:${slot}:${sub}`; }

function toDigest(v: Uint8Array | string): Buffer | null {
  if (typeof v === 'string') return /^[0-9a-fA-F]{64}$/.test(v) ? Buffer.from(v, 'hex') : null;
  return v.length === 32 ? Buffer.from(v.buffer, v.byteOffset, 32) : null;
}
