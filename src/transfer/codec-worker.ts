/**
 * Worker thread: packs (zero check, tree digest, zstd) and unpacks (length check, zstd, tree digest)
 * extents so both cores work while the main thread drives the sockets.
 *
 * `makeCodec`, `codecWorkerMain` and util/tree-digest.ts's `makeTreeDigest` run in the worker from their own source text, so the worker needs
 * no TypeScript loader (a loader in every worker costs memory on each side; docs/transfer.md,
 * Measurements). They must stay self-contained: no references to this module's imports
 * (`codecWorkerMain` may use `makeCodec`, which the worker's script defines first), only `require`
 * of absolute paths from `workerData`, and plain values.
 */
import type { makeTreeDigest as MakeTreeDigest } from '../util/tree-digest.ts';

/** Defined by the worker's script before this module's functions (codec-pool.ts). */
declare const makeTreeDigest: typeof MakeTreeDigest;

export interface CodecWorkerData {
  bindingPath: string;
  codec: { RAW: number; ZSTD: number; ZERO: number };
  /** The native digester's library and koffi (absent: the tree digest in JavaScript). */
  nativeLib?: string;
  koffiPath?: string;
}

export type PackRequest = { id: number; op: 'pack'; data: Uint8Array; zstdLevel: number | null; digest?: Uint8Array };
/** `into`: `length` bytes to decompress into (moved here with the request, moved back with the reply). */
export type UnpackRequest = { id: number; op: 'unpack'; codec: number; payload: Uint8Array; length: number; digest: Uint8Array; into?: Uint8Array };
export type WorkerReply =
  /** `spare`: the request's bytes when the payload is not in them (compressed, or a zero marker): for reuse. */
  | { id: number; ok: true; codec: number; payload: Uint8Array | null; digest: Uint8Array; spare?: Uint8Array }
  | { id: number; ok: true; data: Uint8Array }
  | { id: number; ok: false; code: string; message: string };

/** What `makeCodec` works with: passed in, so that its source text also runs as a worker's script. */
export interface CodecDeps {
  getFrameContentSize(frame: Uint8Array): number | null;
  /** zstd-napi's binding: a decompression context that decodes into a buffer of the caller's size. */
  DCtx: new () => { decompress(dst: Uint8Array, src: Uint8Array): number };
  /** zstd-napi's binding: a compression context that compresses into a buffer of the caller's. */
  CCtx: new () => { setParameter(param: number, value: number): void; compress2(dst: Uint8Array, src: Uint8Array): number };
  compressBound(length: number): number;
  CParameter: { compressionLevel: number; contentSizeFlag: number; checksumFlag: number };
  /** The tree digest (util/tree-digest.ts) of an extent's bytes. */
  digest(data: Uint8Array): Buffer;
  codec: { RAW: number; ZSTD: number; ZERO: number };
}

/**
 * Packing (zero check, tree digest, zstd) and unpacking (length check, zstd, tree digest) of extents.
 * Self-contained: it runs in codec workers from its source text, and on the main thread for small extents.
 */
export function makeCodec(deps: CodecDeps): { pack(r: PackRequest): WorkerReply; unpack(r: UnpackRequest): WorkerReply } {
  const { getFrameContentSize, DCtx, CCtx, compressBound, CParameter, digest: treeDigest, codec: CODEC } = deps;

  const zeros = Buffer.alloc(1024 * 1024);
  const compressors = new Map<number, InstanceType<CodecDeps['CCtx']>>();
  // zstd's output goes here first: one buffer reused, not one of the bound's size per extent
  let scratch = Buffer.alloc(0);
  const dctx = new DCtx();

  const isZero = (b: Buffer): boolean => {
    for (let i = 0; i < b.length; i += zeros.length) {
      const n = Math.min(zeros.length, b.length - i);
      if (!b.subarray(i, i + n).equals(zeros.subarray(0, n))) return false;
    }
    return true;
  };

  const compressor = (level: number): InstanceType<CodecDeps['CCtx']> => {
    let c = compressors.get(level);
    if (!c) {
      c = new CCtx();
      c.setParameter(CParameter.compressionLevel, level);
      c.setParameter(CParameter.contentSizeFlag, 1);
      c.setParameter(CParameter.checksumFlag, 0);
      compressors.set(level, c);
    }
    return c;
  };

  const pack = (r: PackRequest): WorkerReply => {
    const data = Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength);
    // a digest from the caller: data it found not all zeros and already hashed
    if (!r.digest && isZero(data)) return { id: r.id, ok: true, codec: CODEC.ZERO, payload: null, digest: new Uint8Array(32), spare: r.data };
    const digest = r.digest ?? treeDigest(data);
    if (r.zstdLevel !== null) {
      const bound = compressBound(data.length);
      if (scratch.length < bound) scratch = Buffer.allocUnsafeSlow(bound);
      const n = compressor(r.zstdLevel).compress2(scratch, data);
      // Not worth a decompress on the other side unless it saves at least 3 %.
      if (n < data.length - (data.length >> 5)) {
        // its own buffer of its size: moves to the caller without a copy, holds nothing more in the send window
        const payload = Buffer.allocUnsafeSlow(n);
        scratch.copy(payload, 0, 0, n);
        return { id: r.id, ok: true, codec: CODEC.ZSTD, payload, digest, spare: r.data };
      }
    }
    return { id: r.id, ok: true, codec: CODEC.RAW, payload: r.data, digest };
  };

  const unpack = (r: UnpackRequest): WorkerReply => {
    const payload = Buffer.from(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength);
    let data: Buffer;
    if (r.codec === CODEC.ZSTD) {
      let size: number | null;
      try { size = getFrameContentSize(payload); } catch { size = null; }
      if (size !== r.length) {
        return { id: r.id, ok: false, code: 'BAD_LENGTH', message: `compressed extent declares ${size ?? 'no'} bytes, frame header says ${r.length}` };
      }
      // Into exactly the declared bytes: further frames, or a frame holding more than it claims, fail
      // here instead of being inflated (a 32 KiB payload of RLE blocks holds 1 GiB; docs/reliability.md).
      data = r.into && r.into.byteLength === r.length ? Buffer.from(r.into.buffer, r.into.byteOffset, r.length) : Buffer.allocUnsafe(r.length);
      let n: number;
      try { n = dctx.decompress(data, payload); } catch (e) {
        return { id: r.id, ok: false, code: 'BAD_FRAME', message: `compressed extent does not decompress into its declared ${r.length} bytes: ${(e as Error).message}` };
      }
      data = data.subarray(0, n);
      if (data.length !== r.length) return { id: r.id, ok: false, code: 'BAD_LENGTH', message: `extent decompressed to ${data.length} bytes, expected ${r.length}` };
    } else {
      data = payload;
    }
    const d = treeDigest(data);
    if (!d.equals(Buffer.from(r.digest))) {
      return { id: r.id, ok: false, code: 'BAD_DIGEST', message: `extent digest mismatch: received ${Buffer.from(r.digest).toString('hex').slice(0, 16)}…, computed ${d.toString('hex').slice(0, 16)}…` };
    }
    return { id: r.id, ok: true, data };
  };

  return { pack, unpack };
}

/** The worker's entry point (its source text is the worker's script, after `makeCodec`'s). */
export function codecWorkerMain(): void {
  const { parentPort, workerData } = require('node:worker_threads') as typeof import('node:worker_threads');
  const wd = workerData as CodecWorkerData;
  // the native tree digest, called synchronously on this worker's thread; else JavaScript
  let digest: ((data: Uint8Array) => Buffer) | null = null;
  if (wd.nativeLib && wd.koffiPath) {
    try {
      const koffi = require(wd.koffiPath) as { load(p: string): { func(d: string): (...a: unknown[]) => number } };
      const tree = koffi.load(wd.nativeLib).func('int vmlift_tree_digest(const uint8_t *data, size_t len, uint8_t *md)');
      digest = (data) => {
        const md = Buffer.allocUnsafe(32);
        if (tree(data, data.byteLength, md) !== 0) throw new Error('native tree digest failed (libcrypto)');
        return md;
      };
    } catch { digest = null; }
  }
  digest ??= makeTreeDigest(require('node:crypto') as typeof import('node:crypto')).of;
  const binding = require(wd.bindingPath) as Pick<CodecDeps, 'getFrameContentSize' | 'DCtx' | 'CCtx' | 'compressBound' | 'CParameter'>;
  const { pack, unpack } = makeCodec({
    getFrameContentSize: binding.getFrameContentSize,
    DCtx: binding.DCtx,
    CCtx: binding.CCtx,
    compressBound: binding.compressBound,
    CParameter: binding.CParameter,
    digest,
    codec: wd.codec,
  });
  parentPort!.on('message', (r: PackRequest | UnpackRequest) => {
    let reply: WorkerReply;
    try {
      reply = r.op === 'pack' ? pack(r) : unpack(r);
    } catch (e) {
      reply = { id: r.id, ok: false, code: 'INTERNAL', message: (e as Error).message };
    }
    const transfer: ArrayBuffer[] = [];
    const out = 'payload' in reply ? reply.payload : 'data' in reply ? reply.data : null;
    const came = r.op === 'pack' ? r.data : r.payload;
    if (out && out.byteOffset === 0 && out.byteLength === out.buffer.byteLength && out.buffer instanceof ArrayBuffer) transfer.push(out.buffer);
    // decompressed into the caller's buffer (a view of it): move that buffer back whole
    else if (out && r.op === 'unpack' && r.into && out.buffer === r.into.buffer && out.buffer instanceof ArrayBuffer) transfer.push(out.buffer);
    // A raw extent is a view into the buffer that came in (after an unpack's frame header, or the first
    // bytes of a pooled buffer): move that buffer back too. Without it structured clone copies the
    // whole buffer (and the receiver gets garbage).
    else if (out && out.buffer === came.buffer && out.buffer instanceof ArrayBuffer) transfer.push(out.buffer);
    if ('spare' in reply && reply.spare && reply.spare.buffer instanceof ArrayBuffer && !transfer.includes(reply.spare.buffer)) transfer.push(reply.spare.buffer);
    parentPort!.postMessage(reply, transfer);
  });
}
