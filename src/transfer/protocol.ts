/**
 * The vmlift wire protocol, shared by the sender and the receiver.
 *
 * Control port (default 8080): HTTP/1.1 + JSON over TLS. A source authenticates with the headers
 * `x-vmlift-source: <sourceId>` and `authorization: Bearer <credential>`; errors come back as
 * `{ "error": { "code", "message", "fix" } }` with a 4xx/5xx status.
 *
 * Data port (default 8703): TLS stream of frames, both directions:
 *   u32 BE frameLength (bytes after this field) | u8 type | body
 * JSON frames (HELLO, READY, SYNC, ACK, ERROR) carry UTF-8 JSON. EXTENT frames carry a fixed
 * 56-byte header then the payload:
 *   u8 codec | u8 0 | u48 seq | u32 disk | u48 offset | u16 0 | u32 length | 32 bytes SHA-256 | payload
 * `length` is the uncompressed length; the digest is the tree digest of the uncompressed bytes
 * (util/tree-digest.ts; wire version 2, wire-version.ts), all zero for a ZERO marker, which has no payload. The sender pipelines extents without waiting;
 * the receiver answers with ACK {seq} after its store flushed every extent up to `seq` (durable).
 */
import { CodedError, type ErrorReport } from '../util/errors.ts';

export const FRAME = { HELLO: 1, READY: 2, EXTENT: 3, SYNC: 4, ACK: 5, ERROR: 6 } as const;
export const CODEC = { RAW: 0, ZSTD: 1, ZERO: 2 } as const;
export type Codec = (typeof CODEC)[keyof typeof CODEC];

export const EXTENT_HEADER = 56;
/** Largest data extent (uncompressed) in one frame. */
export const MAX_DATA_EXTENT = 4 * 1024 * 1024;
/**
 * A sender cuts data into pieces ending on absolute multiples of this (1 MiB, the image store's
 * default chunk size): one frame each, and the leaves of a source digest tree (digest-tree.ts).
 */
export const PIECE_SIZE = 1024 * 1024;
/** Largest ZERO marker. */
export const MAX_ZERO_EXTENT = 1024 * 1024 * 1024;
/** Largest frame either side accepts (a data extent plus header); anything longer is refused. */
export const MAX_FRAME = 1 + EXTENT_HEADER + MAX_DATA_EXTENT;
export const MAX_JSON_FRAME = 64 * 1024;
/** Offsets and sequence numbers travel as 48-bit integers. */
export const MAX_U48 = 2 ** 48 - 1;

export const DIGEST_BLOCK_SIZES = { min: 4096, max: 64 * 1024 * 1024 };

export interface ExtentHeader {
  codec: number;
  seq: number;
  disk: number;
  offset: number;
  length: number;
  digest: Buffer;
}

export function encodeJsonFrame(type: number, value: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(value), 'utf8');
  const b = Buffer.allocUnsafe(5 + body.length);
  b.writeUInt32BE(1 + body.length, 0);
  b.writeUInt8(type, 4);
  body.copy(b, 5);
  return b;
}

/** The frame prefix + extent header; the payload is written after it as is. */
export function encodeExtentHeader(h: ExtentHeader, payloadLength: number): Buffer {
  const b = Buffer.alloc(5 + EXTENT_HEADER);
  b.writeUInt32BE(1 + EXTENT_HEADER + payloadLength, 0);
  b.writeUInt8(FRAME.EXTENT, 4);
  b.writeUInt8(h.codec, 5);
  b.writeUIntBE(h.seq, 7, 6);
  b.writeUInt32BE(h.disk, 13);
  b.writeUIntBE(h.offset, 17, 6);
  b.writeUInt32BE(h.length, 25);
  h.digest.copy(b, 29, 0, 32);
  return b;
}

export function decodeExtentHeader(body: Buffer): ExtentHeader {
  return {
    codec: body.readUInt8(0),
    seq: body.readUIntBE(2, 6),
    disk: body.readUInt32BE(8),
    offset: body.readUIntBE(12, 6),
    length: body.readUInt32BE(20),
    digest: body.subarray(24, 56),
  };
}

/** The peer broke the wire protocol (a frame too long, an unknown codec, a bad digest, ...). */
export class ProtocolError extends CodedError {}

/** The fix of a frame only another vmlift version (or a peer that is not vmlift) would send. */
export const SAME_VERSION_FIX = 'run the same vmlift version on the sender and the receiver';

/**
 * Buffers of one capacity, the largest big frame seen (a raw 1 MiB extent's), given back for reuse,
 * process-wide. A request above half that capacity gets a view of a pooled buffer: compressed
 * frames and the extents they decompress into share the raw frames' buffers instead of a fresh
 * allocation each (fresh ones cost page faults and drive V8's collections; docs/transfer.md).
 */
class FrameBufferPool {
  private free: ArrayBuffer[] = [];
  private size = 0;
  constructor(private readonly max: number) {}

  /** A buffer of `n` bytes of its own (a view of a pooled one when `n` is more than half the pooled capacity). */
  take(n: number): Buffer {
    if (n > this.size && n > 65536) { this.size = n; this.free = []; }
    if (this.size > 65536 && n > this.size / 2) return Buffer.from(this.free.pop() ?? new ArrayBuffer(this.size), 0, n);
    return Buffer.allocUnsafeSlow(n);
  }

  give(ab: ArrayBufferLike): void {
    if (ab instanceof ArrayBuffer && ab.byteLength === this.size && this.free.length < this.max) this.free.push(ab);
  }
}

/**
 * Enough for the frames one busy data connection holds (16 MiB queued + 8 MiB being written), shared
 * by all connections: idle buffers cost at most this many frames of memory.
 */
const sharedFrameBuffers = new FrameBufferPool(32);

/**
 * Splits a byte stream into frames. The bytes pushed in are only lent (a socket's reused read
 * buffer): each frame is copied once, straight into a buffer of its own (from a process-wide pool
 * for big frames, given back with `recycle`); or a socket reads straight into the frame (`target`,
 * `landed`: no copy at all). A declared length above `maxFrame` is refused before
 * anything is buffered for it; the error is thrown by `next` once the frames before it are taken.
 */
export class FrameAssembler {
  /** Its own ArrayBuffer: a socket may read straight into it (`target`), and V8 never moves it. */
  private readonly head = Buffer.from(new ArrayBuffer(5));
  private headFill = 0;
  private frame: Buffer | null = null;
  private fill = 0;
  private readonly ready: { type: number; body: Buffer; owned: boolean }[] = [];
  private error: ProtocolError | null = null;
  private framesStarted = 0;
  private scratch: Buffer | null = null;
  /**
   * `firstFrameMax`: a lower limit for the first frame only (the receiver's HELLO, from a peer not yet let in:
   * a frame's buffer is made when its length arrives). Later frames may be pipelined behind it.
   */
  constructor(private readonly maxFrame = MAX_FRAME, private readonly pool = sharedFrameBuffers, private readonly firstFrameMax = maxFrame) {}

  recycle(ab: ArrayBufferLike): void {
    this.pool.give(ab);
  }

  /** A buffer of `n` bytes of its own from the same pool (a compressed extent decompresses into it), given back with `recycle`. */
  buffer(n: number): Buffer {
    return this.pool.take(n);
  }

  /** Copy `bytes` in (the caller may reuse them as soon as this returns). */
  push(bytes: Uint8Array): void {
    let pos = 0;
    while (pos < bytes.length && !this.error) {
      const into = this.target();
      const k = Math.min(into.length, bytes.length - pos);
      into.set(bytes.subarray(pos, pos + k));
      pos += k;
      this.landed(k);
    }
  }

  /**
   * Where the next bytes of the stream go without a copy: the rest of the frame being assembled,
   * else the rest of the 5-byte frame prefix (after an error: a scratch buffer, the bytes are
   * dropped). A reader writes up to its length there and then calls `landed` with the count;
   * nothing else may be pushed in between.
   */
  target(): Uint8Array {
    if (this.error) return (this.scratch ??= Buffer.allocUnsafeSlow(16 * 1024));
    if (this.frame) return this.frame.subarray(this.fill);
    return this.head.subarray(this.headFill);
  }

  /** `n` bytes were written into the last `target`. */
  landed(n: number): void {
    if (this.error || n <= 0) return;
    if (this.frame) {
      this.fill += n;
      if (this.fill === this.frame.length) this.complete();
      return;
    }
    this.headFill += n;
    if (this.headFill < 5) return;
    this.headFill = 0;
    const len = this.head.readUInt32BE(0);
    const max = this.framesStarted++ === 0 ? this.firstFrameMax : this.maxFrame;
    if (len < 1 || len > max) {
      this.error = new ProtocolError('BAD_FRAME_LENGTH', `frame length ${len} is outside 1..${max}`, { fix: SAME_VERSION_FIX });
      return;
    }
    this.frame = this.pool.take(4 + len);
    this.head.copy(this.frame, 0);
    this.fill = 5;
    if (this.fill === this.frame.length) this.complete();
  }

  private complete(): void {
    this.ready.push({ type: this.frame![4]!, body: this.frame!.subarray(5), owned: true });
    this.frame = null;
  }

  next(): { type: number; body: Buffer; owned: boolean } | null {
    const f = this.ready.shift();
    if (f) return f;
    if (this.error) throw this.error;
    return null;
  }
}

export function parseJsonBody(body: Buffer): Record<string, unknown> {
  if (body.length > MAX_JSON_FRAME) throw new ProtocolError('BAD_FRAME_LENGTH', `control frame of ${body.length} bytes is too long`, { fix: SAME_VERSION_FIX });
  let v: unknown;
  try { v = JSON.parse(body.toString('utf8')); } catch { throw new ProtocolError('BAD_FRAME', 'control frame is not valid JSON', { fix: SAME_VERSION_FIX }); }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new ProtocolError('BAD_FRAME', 'control frame is not a JSON object', { fix: SAME_VERSION_FIX });
  return v as Record<string, unknown>;
}

/** Error body of the control API and of ERROR frames (`transient`: the peer may try again). */
export type WireError = ErrorReport;

/** Headers of the control API. */
export const HDR_SOURCE = 'x-vmlift-source';

/** Errors that end a cycle session for good (no reconnect would help). */
export const FATAL_CODES = new Set([
  'AUTH', 'BAD_ID', 'BAD_DIGEST', 'BAD_FRAME', 'BAD_FRAME_LENGTH', 'BAD_LENGTH', 'OUT_OF_RANGE', 'BAD_DISK',
  'BAD_CODEC', 'BAD_REQUEST', 'CODE_EXPIRED', 'CODE_USED_UP', 'CODE_UNKNOWN', 'ALREADY_REGISTERED',
  'MISSING_EXTENTS', 'CHECKSUM_MISMATCH', 'CYCLE_OPEN', 'FINGERPRINT_MISMATCH', 'NO_SPACE', 'WIRE_VERSION',
]);
