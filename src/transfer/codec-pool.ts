import { Worker } from 'node:worker_threads';
import { createRequire } from 'node:module';
import { codecWorkerMain, makeCodec, type CodecDeps, type CodecWorkerData, type PackRequest, type UnpackRequest, type WorkerReply } from './codec-worker.ts';
import { CODEC, PIECE_SIZE, ProtocolError } from './protocol.ts';
import { BufferPool } from '../util/buffer-pool.ts';
import { INLINE_HASH_MAX, nativeDigest, nativeDigestLibrary, type NativeDigest } from '../util/native-digest.ts';
import { TREE_BLOCK, makeTreeDigest, treeDigest, wholeTreeBlocks } from '../util/tree-digest.ts';
import { WorkerPool } from '../util/worker-pool.ts';

/** `release`: the payload is in a buffer of the pool's: call once nothing reads it any more (it is reused). */
export interface Packed { codec: number; payload: Buffer | null; digest: Buffer; release?: () => void }

/**
 * Extents up to this size are compressed on the calling thread: for them zstd costs less than a
 * round trip to a codec worker, and incremental cycles send many of them (docs/transfer.md, Measurements).
 */
export const INLINE_PACK_MAX = 16 * 1024;

const requireHere = createRequire(import.meta.url);

/** A worker running `codecWorkerMain` from its source text: no TypeScript loader in the worker. */
function startCodecWorker(): Worker {
  const workerData: CodecWorkerData = {
    bindingPath: requireHere.resolve('zstd-napi/binding'),
    codec: { ...CODEC },
    nativeLib: nativeDigestLibrary() ?? undefined,
    koffiPath: nativeDigestLibrary() ? requireHere.resolve('koffi') : undefined,
  };
  // `__name`: the helper tsx's transform adds to keep function names; a no-op here
  return new Worker(`var __name = (f) => f;\nvar makeTreeDigest = ${String(makeTreeDigest)};\nvar makeCodec = ${String(makeCodec)};\n(${String(codecWorkerMain)})()`, { eval: true, workerData });
}

/**
 * A small pool of codec workers (2 by default: one per core of the target machines), started on
 * first use (util/worker-pool.ts). Uncompressed extents (level 0 out, RAW in) do not go to a worker:
 * small ones are hashed inline, large ones by the native digester in place off the event loop, with
 * no copy and no message per extent.
 */
export class CodecPool {
  private readonly pool: WorkerPool<WorkerReply>;
  private readonly native: NativeDigest | null;
  /**
   * The copies of pieces that go to a worker: one piece each, reused once the piece (or its
   * compressed form) is no longer held. A send window holds at most 64 MiB of pieces (sender.ts).
   */
  readonly pieceBuffers = new BufferPool(PIECE_SIZE, 64);

  /** `native`: hash uncompressed extents natively when possible (default). */
  constructor(size = 2, native = true) {
    this.native = native ? nativeDigest() : null;
    this.pool = new WorkerPool<WorkerReply>(size, startCodecWorker);
  }

  private inlineCodec: ReturnType<typeof makeCodec> | undefined;
  /** The codec on this thread (for small extents). */
  private inline(): ReturnType<typeof makeCodec> {
    const binding = requireHere('zstd-napi/binding') as Pick<CodecDeps, 'getFrameContentSize' | 'DCtx' | 'CCtx' | 'compressBound' | 'CParameter'>;
    this.inlineCodec ??= makeCodec({
      getFrameContentSize: binding.getFrameContentSize,
      DCtx: binding.DCtx,
      CCtx: binding.CCtx,
      compressBound: binding.compressBound,
      CParameter: binding.CParameter,
      digest: (b: Uint8Array) => this.digestHere(b),
      codec: { ...CODEC },
    });
    return this.inlineCodec;
  }

  /** The tree digest of a small `data` on this thread: natively unless this pool was made without. */
  private digestHere(data: Uint8Array): Buffer {
    return this.native ? this.native.treeHere(data) : treeDigest(data);
  }

  /** Whether `pack` works on this thread, on the bytes it is given (else on a copy, or moved, in a worker). */
  packsHere(zstdLevel: number | null, length: number, digest?: Buffer): boolean {
    return zstdLevel === null && (digest !== undefined || this.native !== null || length <= INLINE_HASH_MAX);
  }

  private run(req: Omit<PackRequest, 'id'> | Omit<UnpackRequest, 'id'>, transfer: ArrayBuffer[]): Promise<WorkerReply> {
    return this.pool.run(req, transfer);
  }

  /**
   * Zero check, tree digest (util/tree-digest.ts) and (zstdLevel !== null) compression of a copy of `data`; `owned`: `data` is
   * the whole of its own ArrayBuffer and the caller gives it up: it is transferred, not copied.
   * `digest`: the caller's tree digest of `data` (it is then taken as not all zeros and not hashed again).
   * `given`: the caller gave `data` up although it is a view of a larger buffer (the agent's read
   * units): used in place when it stays on this thread (no compression), copied for a worker.
   * A copy for a worker is made in a buffer of `pieceBuffers`: the result's `release` gives it back.
   */
  async pack(data: Uint8Array, zstdLevel: number | null, owned = false, digest?: Buffer, given = false): Promise<Packed> {
    const here = this.packsHere(zstdLevel, data.byteLength, digest);
    const pooled = !owned && !here && data.byteLength > INLINE_PACK_MAX && data.byteLength <= this.pieceBuffers.size;
    // own ArrayBuffer: transferred, and the caller may reuse `data`
    const copy = owned ? new Uint8Array(data.buffer, 0, data.byteLength) : given && here ? data
      : pooled ? copyInto(this.pieceBuffers.take(), data) : new Uint8Array(data);
    if (here) {
      const payload = Buffer.from(copy.buffer, copy.byteOffset, copy.byteLength);
      if (digest) return { codec: CODEC.RAW, payload, digest };
      if (payload.length <= INLINE_HASH_MAX) {
        if (isAllZero(payload)) return { codec: CODEC.ZERO, payload: null, digest: Buffer.alloc(32) };
        return { codec: CODEC.RAW, payload, digest: this.digestHere(payload) };
      }
      // zero flags and the tree digest in one pass
      const r = await this.native!.blocks(payload, TREE_BLOCK, 1, wholeTreeBlocks(payload.length));
      if (r.zero.every((z) => z === 1)) return { codec: CODEC.ZERO, payload: null, digest: Buffer.alloc(32) };
      return { codec: CODEC.RAW, payload, digest: r.pieceDigests! };
    }
    const req = { op: 'pack' as const, data: copy, zstdLevel, digest: digest ? new Uint8Array(digest) : undefined };
    // a small extent costs less to compress here than its round trip to a worker
    let r: WorkerReply;
    try {
      r = copy.byteLength <= INLINE_PACK_MAX ? this.inline().pack({ id: 0, ...req }) : await this.run(req, [copy.buffer as ArrayBuffer]);
    } catch (e) {
      if (pooled) this.pieceBuffers.lost();
      throw e;
    }
    // an error reply, or a reply without the pack's bytes: the pooled buffer stayed in the worker
    if (pooled && !(r.ok && 'codec' in r && (r.spare || r.payload))) this.pieceBuffers.lost();
    if (!r.ok) throw new Error(r.message);
    if (!('codec' in r)) throw new Error('unexpected worker reply');
    if (pooled && r.spare) this.pieceBuffers.give(r.spare.buffer as ArrayBuffer);
    const packed: Packed = {
      codec: r.codec,
      payload: r.payload ? Buffer.from(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength) : null,
      digest: Buffer.from(r.digest.buffer, r.digest.byteOffset, r.digest.byteLength),
    };
    if (pooled && !r.spare && r.payload) packed.release = once(() => this.pieceBuffers.give(r.payload!.buffer as ArrayBuffer));
    return packed;
  }

  /**
   * Decompress / check length and tree digest. Throws ProtocolError on a bad extent. `into`: a
   * buffer of at least `length` bytes of its own ArrayBuffer, given up by the caller, that a
   * compressed extent is decompressed into (the result is a view of it; else a fresh buffer).
   */
  async unpack(codec: number, payload: Buffer, length: number, digest: Buffer, owned = false, into?: Buffer): Promise<Buffer> {
    if (codec === CODEC.RAW && (this.native || payload.length <= INLINE_HASH_MAX)) {
      // in place: nothing else writes to a received frame's bytes
      const d = payload.length > INLINE_HASH_MAX ? await this.native!.tree(payload) : this.digestHere(payload);
      if (!d.equals(digest)) throw new ProtocolError('BAD_DIGEST', digestMismatch(digest, d));
      return payload;
    }
    // an owned payload (its ArrayBuffer holds nothing else in use) moves to the worker without a copy
    const p = owned ? new Uint8Array(payload.buffer, payload.byteOffset, payload.length) : new Uint8Array(payload);
    const out = into && codec === CODEC.ZSTD && into.length >= length && into.buffer !== p.buffer ? new Uint8Array(into.buffer, into.byteOffset, length) : undefined;
    const transfer = [p.buffer as ArrayBuffer];
    if (out) transfer.push(out.buffer as ArrayBuffer);
    const r = await this.run({ op: 'unpack', codec, payload: p, length, digest: new Uint8Array(digest), into: out }, transfer);
    if (!r.ok) throw new ProtocolError(r.code, r.message);
    if (!('data' in r)) throw new Error('unexpected worker reply');
    return Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength);
  }

  /** @internal Tests: end one codec worker as a crash would. */
  killWorker(): Promise<number> { return this.pool.killOne(); }

  close(): Promise<void> {
    return this.pool.close();
  }
}

export function digestMismatch(received: Uint8Array, computed: Uint8Array): string {
  return `extent digest mismatch: received ${Buffer.from(received).toString('hex').slice(0, 16)}…, computed ${Buffer.from(computed).toString('hex').slice(0, 16)}…`;
}

function copyInto(b: ArrayBuffer, data: Uint8Array): Uint8Array {
  const view = new Uint8Array(b, 0, data.byteLength);
  view.set(data);
  return view;
}

function once(f: () => void): () => void {
  let done = false;
  return () => { if (!done) { done = true; f(); } };
}

const zeroPage = Buffer.alloc(64 * 1024);
function isAllZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i += zeroPage.length) {
    const n = Math.min(zeroPage.length, b.length - i);
    if (!b.subarray(i, i + n).equals(zeroPage.subarray(0, n))) return false;
  }
  return true;
}

/** Workers of the shared pool: one per core of the target machines. */
export const CODEC_WORKERS = 2;

let shared: CodecPool | null = null;
/** One pool per process, shared by every sender and receiver connection in it. */
export function sharedCodecPool(): CodecPool {
  shared ??= new CodecPool(CODEC_WORKERS);
  return shared;
}
