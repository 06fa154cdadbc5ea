/**
 * Scan one disk: read it in order (reads in parallel, bounded), digest every 4 KiB block, compare
 * with the previous image's manifest and send the blocks that differ, coalesced into extents of at
 * most one window. Holes the source reports are not read. Writes the new manifest as it goes and,
 * with `wholeDigest`, hashes the whole disk in order. Reads and digests go by units of four windows
 * (one read, one digest call per 4 MiB), compared and sent window by window.
 */
import { createHash, type Hash } from 'node:crypto';
import type { BlockSource, SourceExtent } from '../source/types.ts';
import { clampReads } from '../source/clamp.ts';
import type { Range } from '../model/ranges.ts';
import { BLOCK_SIZE, DIGEST_SIZE, zeroDigest, type ManifestReader, type ManifestWriter } from './manifest.ts';
import { BLOCK_DIGEST, sharedDigestPool, type DigestPool, type WindowDigests } from './digest-pool.ts';
import { treeDigestFromBlocks } from '../util/tree-digest.ts';
import { nativeDigest } from '../util/native-digest.ts';
import { crashPoint } from '../util/crash.ts';

/** The longest extent sent (a wire piece), and the unit of comparison. */
export const WINDOW = 1024 * 1024;
/**
 * What one read and one digest call cover: per-read costs (promises, a pool hand-off, the digest
 * call's set-up) come once per four windows (docs/transfer.md, issue 16 session 9).
 */
export const READ_UNIT = 4 * WINDOW;

export interface ExtentSink {
  /** Ship `length` bytes at `offset`; `data` null = all zeros. Resolves when the sink can take more. */
  send(disk: number, offset: number, data: Buffer | null, length: number, opts?: { handOver?: boolean; digest?: Buffer; release?: () => void }): Promise<void>;
}

export interface ScanProgress {
  disk: number;
  /** Bytes of the disk scanned so far. */
  done: number;
  total: number;
  /** Bytes of changed blocks found so far. */
  changed: number;
}

export interface ScanOptions {
  disk: number;
  source: BlockSource;
  oldManifest: ManifestReader;
  newManifest: ManifestWriter;
  sink: ExtentSink;
  /** Ranges the receiver already holds for this disk in the open cycle (sorted): not sent again. */
  held?: Range[];
  wholeDigest?: boolean;
  /** Reads in flight (default: the source's maxInFlight, at most 8). */
  readAhead?: number;
  onProgress?: (p: ScanProgress) => void;
  signal?: AbortSignal;
  /** Where block digests are computed (default: a shared pool of 2 worker threads); null = on this thread. */
  digestPool?: DigestPool | null;
}

export interface ScanResult {
  disk: number;
  capacity: number;
  /** Bytes read from the source (holes are not read). */
  readBytes: number;
  /** Bytes in blocks that differ from the previous image. */
  changedBytes: number;
  /** Of those, bytes sent (the rest the receiver already held). */
  sentBytes: number;
  extents: number;
  /** Whole-disk SHA-256 (hex) when asked for. */
  sha256?: string;
}

interface Window {
  offset: number;
  length: number;
  /** Part to read, [readStart, readEnd); empty when the window is all hole. */
  readStart: number;
  readEnd: number;
}

/** Walks the source's extent map in step with the windows. */
class HoleMap {
  private it: AsyncIterator<SourceExtent> | undefined;
  private pending: SourceExtent[] = [];
  private done = false;

  constructor(source: BlockSource) {
    this.it = source.extents ? source.extents()[Symbol.asyncIterator]() : undefined;
  }

  /** The block-aligned part of [start, end) to read (covers every data byte in it). */
  async dataSpan(start: number, end: number): Promise<[number, number]> {
    if (!this.it) return [start, end];
    let lo = Infinity; let hi = -Infinity;
    for (;;) {
      while (this.pending.length && this.pending[0]!.offset + this.pending[0]!.length <= start) this.pending.shift();
      for (const e of this.pending) {
        if (e.offset >= end) break;
        if (!e.data) continue;
        lo = Math.min(lo, Math.max(e.offset, start));
        hi = Math.max(hi, Math.min(e.offset + e.length, end));
      }
      const last = this.pending[this.pending.length - 1];
      if (this.done || (last && last.offset + last.length >= end)) break;
      const r = await this.it.next();
      if (r.done) { this.done = true; break; }
      if (r.value.length > 0) this.pending.push(r.value);
    }
    if (lo === Infinity) return [start, start];
    return [start + Math.floor((lo - start) / BLOCK_SIZE) * BLOCK_SIZE, Math.min(end, start + Math.ceil((hi - start) / BLOCK_SIZE) * BLOCK_SIZE)];
  }
}

class HeldCursor {
  private i = 0;
  constructor(private readonly ranges: Range[]) {}
  /** Whether [off, off+len) lies inside one held range. Calls must go forward. */
  covers(off: number, len: number): boolean {
    while (this.i < this.ranges.length && this.ranges[this.i]!.offset + this.ranges[this.i]!.length <= off) this.i++;
    const r = this.ranges[this.i];
    return !!r && r.offset <= off && r.offset + r.length >= off + len;
  }
}

/**
 * Read-unit buffers to read into again: a unit comes back once the scan is done with it and the
 * receiver acknowledged every window of it that was sent whole (SendOptions.release). A fresh
 * buffer per read made V8 run a major GC every few dozen MiB (docs/transfer.md, Measurements).
 */
class UnitBuffers {
  private readonly free: Buffer[] = [];
  constructor(private readonly max = 32) {}
  take(): Buffer { return this.free.pop() ?? Buffer.allocUnsafeSlow(READ_UNIT); }
  /** `b` is not used any more (a buffer moved to another thread is detached: dropped). */
  give(b: Buffer): void {
    if (b.byteLength === READ_UNIT && b.buffer.byteLength === READ_UNIT && this.free.length < this.max) this.free.push(b);
  }
  /**
   * The holds on `b`: the scan's own (`done`) and one per window handed to the sink (`hold` gives
   * its release); the buffer comes back when all have ended.
   */
  holds(b: Buffer): { hold: () => () => void; done: () => void } {
    let n = 1;
    const end = (): void => { if (--n === 0) this.give(b); };
    return { hold: () => { n++; let once = false; return () => { if (!once) { once = true; end(); } }; }, done: end };
  }
}

let zeroWindow: Buffer | undefined;
function zeros(n: number): Buffer {
  if (!zeroWindow) zeroWindow = Buffer.alloc(WINDOW);
  return zeroWindow.subarray(0, n);
}

export async function scanDisk(o: ScanOptions): Promise<ScanResult> {
  const { disk } = o;
  const source = clampReads(o.source); // a window longer than one read becomes several
  const capacity = source.capacity;
  // in windows as before (at most 8 MiB in flight), made of read units
  const readAhead = Math.max(1, Math.ceil((o.readAhead ?? Math.min(8, source.maxInFlight)) * WINDOW / READ_UNIT));
  const holes = new HoleMap(source);
  const held = new HeldCursor(o.held ?? []);
  const whole: Hash | undefined = o.wholeDigest ? createHash('sha256') : undefined;
  const res: ScanResult = { disk, capacity, readBytes: 0, changedBytes: 0, sentBytes: 0, extents: 0 };

  const pool = o.digestPool === undefined ? sharedDigestPool() : o.digestPool;
  const buffers = source.readInto ? new UnitBuffers() : null;
  const read = (start: number, length: number): Promise<Buffer> => {
    if (!buffers || length !== READ_UNIT) return source.read(start, length);
    const b = buffers.take();
    return source.readInto!(start, b).then(() => b, (e: unknown) => { buffers.give(b); throw e; });
  };
  const queue: { w: Window; data: Promise<Buffer | null>; digests: Promise<(WindowDigests & { data: Buffer }) | null> }[] = [];
  let next = 0;
  const plan = async (): Promise<void> => {
    const offset = next;
    const length = Math.min(READ_UNIT, capacity - offset);
    next += length;
    const [readStart, readEnd] = await holes.dataSpan(offset, offset + length);
    const w: Window = { offset, length, readStart, readEnd };
    const data = readEnd > readStart ? read(readStart, readEnd - readStart).then((b) => { crashPoint('agent:read'); return b; }) : Promise.resolve(null);
    // Hash as soon as the read lands, while earlier windows are still being sent. The window's
    // wire digest comes from its block digests in the same pass (a tree digest): no byte is hashed twice.
    // The read buffer moves to the worker and back (no copy): use the one the digests come with.
    // With the tree digest of each window read whole (its wire digest when it is sent whole).
    const digests = pool ? data.then((b) => (b ? pool.digestOwned(b, BLOCK_SIZE, true, readStart === offset ? WINDOW : undefined) : null)) : Promise.resolve(null);
    data.catch(() => {}); // awaited in order below; avoid an unhandled rejection meanwhile
    digests.catch(() => {});
    queue.push({ w, data, digests });
  };

  while (queue.length < readAhead && next < capacity) await plan();
  while (queue.length) {
    if (o.signal?.aborted) throw o.signal.reason ?? new Error('aborted');
    const { w, data, digests } = queue.shift()!;
    const read = await data;
    const dig = await digests;
    const buf = dig ? dig.data : read;
    while (queue.length < readAhead && next < capacity) await plan();
    if (buf) res.readBytes += buf.length;
    const holds = buf && buffers ? buffers.holds(buf) : null;
    try {
      for (let at = w.offset; at < w.offset + w.length; at += WINDOW) {
        const part = windowOf(w, at, buf, dig);
        if (whole) {
          if (part.w.readStart > part.w.offset) whole.update(zeros(part.w.readStart - part.w.offset));
          if (part.buf) whole.update(part.buf);
          if (part.w.offset + part.w.length > part.w.readEnd) whole.update(zeros(part.w.offset + part.w.length - Math.max(part.w.readEnd, part.w.offset)));
        }
        await processWindow(o, part.w, part.buf, part.dig, held, res, holds?.hold);
        o.onProgress?.({ disk, done: part.w.offset + part.w.length, total: capacity, changed: res.changedBytes });
      }
    } finally {
      holds?.done();
    }
  }
  if (whole) res.sha256 = whole.digest('hex');
  return res;
}

/**
 * The window at `at` of a read unit: its part of the read (block-aligned, possibly empty), of the
 * buffer and of the digests (its own tree digest when the unit was digested in windows and this
 * window was read whole).
 */
function windowOf(u: Window, at: number, buf: Buffer | null, dig: WindowDigests | null): { w: Window; buf: Buffer | null; dig: WindowDigests | null } {
  const end = Math.min(u.offset + u.length, at + WINDOW);
  const readStart = Math.min(end, Math.max(u.readStart, at));
  const readEnd = Math.max(readStart, Math.min(u.readEnd, end));
  const w: Window = { offset: at, length: end - at, readStart, readEnd };
  if (!buf || readEnd === readStart) return { w, buf: null, dig: null };
  const from = readStart - u.readStart; const to = readEnd - u.readStart;
  const part = buf.subarray(from, to);
  if (!dig) return { w, buf: part, dig: null };
  const k0 = from / BLOCK_SIZE; const k1 = Math.ceil(to / BLOCK_SIZE);
  const unitPieces = u.readStart === u.offset && dig.whole && dig.whole.length === Math.ceil(u.length / WINDOW) * 32;
  const piece = (at - u.offset) / WINDOW;
  const whole = unitPieces && readStart === at && readEnd === end ? dig.whole!.subarray(piece * 32, piece * 32 + 32) : undefined;
  return { w, buf: part, dig: { digests: dig.digests.subarray(k0 * BLOCK_DIGEST, k1 * BLOCK_DIGEST), zero: dig.zero.subarray(k0, k1), whole } };
}

/** Per block of a window: its new manifest record, whether it is all zeros, whether it changed. */
interface BlockStates {
  /** DIGEST_SIZE bytes per block. */
  fresh: Buffer;
  zero: Uint8Array;
  changed: Uint8Array;
}

/**
 * The states of the window's blocks. A window read whole with native digests takes one native call
 * (no JavaScript per 4 KiB block: at 256 blocks a window that loop was a tenth of the agent's main
 * thread, docs/agent.md, Measurements); windows with holes, or digests from the worker fallback, go
 * block by block.
 */
function blockStates(w: Window, buf: Buffer | null, dig: WindowDigests | null, old: Buffer, nBlocks: number): BlockStates {
  const native = nativeDigest();
  if (native && buf && dig && w.readStart === w.offset && w.readEnd === w.offset + w.length && dig.zero.length === nBlocks) {
    const fresh = Buffer.allocUnsafe(nBlocks * DIGEST_SIZE);
    const changed = new Uint8Array(nBlocks);
    native.compareBlocks(dig.digests, nBlocks, BLOCK_DIGEST, DIGEST_SIZE, old, fresh, changed);
    return { fresh, zero: dig.zero, changed };
  }
  const fresh = Buffer.allocUnsafe(nBlocks * DIGEST_SIZE);
  const zeroF = new Uint8Array(nBlocks);
  const changed = new Uint8Array(nBlocks);
  const zero = zeroDigest();
  for (let i = 0; i < nBlocks; i++) {
    const off = w.offset + i * BLOCK_SIZE;
    const len = Math.min(BLOCK_SIZE, w.offset + w.length - off);
    let isZero: boolean;
    let d: Buffer;
    if (!buf || off < w.readStart || off >= w.readEnd) {
      isZero = true;
      d = len === BLOCK_SIZE ? zero : zeroDigest(len);
    } else {
      const k = (off - w.readStart) / BLOCK_SIZE; // reads start on a block boundary of the window
      if (dig) {
        isZero = dig.zero[k] === 1;
        d = dig.digests.subarray(k * BLOCK_DIGEST, k * BLOCK_DIGEST + DIGEST_SIZE);
      } else {
        const block = buf.subarray(off - w.readStart, off - w.readStart + len);
        isZero = len === BLOCK_SIZE ? block.equals(zeros(BLOCK_SIZE)) : block.every((x) => x === 0);
        d = isZero ? (len === BLOCK_SIZE ? zero : zeroDigest(len)) : createHash('sha256').update(block).digest();
      }
    }
    d.copy(fresh, i * DIGEST_SIZE, 0, DIGEST_SIZE);
    zeroF[i] = isZero ? 1 : 0;
    changed[i] = old.compare(fresh, i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE, i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE) !== 0 ? 1 : 0;
  }
  return { fresh, zero: zeroF, changed };
}

/** `hold`: a window sent whole is handed over; the release it returns is its `release`. */
async function processWindow(o: ScanOptions, w: Window, buf: Buffer | null, dig: WindowDigests | null, held: HeldCursor, res: ScanResult, hold: (() => () => void) | undefined): Promise<void> {
  const nBlocks = Math.ceil(w.length / BLOCK_SIZE);
  const first = w.offset / BLOCK_SIZE;
  const old = await o.oldManifest.get(first, nBlocks);
  const { fresh, zero, changed } = blockStates(w, buf, dig, old, nBlocks);
  // Runs of changed blocks to send: [startBlock, endBlock, isZero]
  let runStart = -1; let runZero = false;
  const flush = async (endBlock: number): Promise<void> => {
    if (runStart < 0) return;
    const off = w.offset + runStart * BLOCK_SIZE;
    const len = Math.min(w.offset + w.length, w.offset + endBlock * BLOCK_SIZE) - off;
    const data = runZero ? null : buf!.subarray(off - w.readStart, off - w.readStart + len);
    runStart = -1;
    // A run covering the whole read buffer is its last use: the sender may take it without a copy.
    const handOver = data !== null && data.byteLength === buf!.byteLength;
    // Its wire digest (one piece: windows are pieces) from the block digests: not hashed again.
    let digest: Buffer | undefined;
    if (data && dig) {
      const k = (off - w.readStart) / BLOCK_SIZE;
      digest = handOver && dig.whole ? dig.whole : treeDigestFromBlocks(len, dig.digests.subarray(k * BLOCK_DIGEST, (k + Math.ceil(len / BLOCK_SIZE)) * BLOCK_DIGEST));
    }
    const release = handOver && hold ? hold() : undefined;
    await o.sink.send(o.disk, off, data, len, handOver || digest ? { handOver, digest, release } : undefined);
    res.sentBytes += len;
    res.extents++;
  };
  const lastLen = w.length - (nBlocks - 1) * BLOCK_SIZE;
  const checkHeld = o.held !== undefined && o.held.length > 0;
  for (let i = 0; i < nBlocks; i++) {
    const isChanged = changed[i] === 1;
    const len = i === nBlocks - 1 ? lastLen : BLOCK_SIZE;
    if (isChanged) res.changedBytes += len;
    const send = isChanged && !(checkHeld && held.covers(w.offset + i * BLOCK_SIZE, len));
    const isZero = zero[i] === 1;
    if (!send || (runStart >= 0 && runZero !== isZero)) await flush(i);
    if (send && runStart < 0) { runStart = i; runZero = isZero; }
  }
  await flush(nBlocks);
  await o.newManifest.append(fresh);
}
