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
 * `length` is the uncompressed length; the digest is the SHA-256 of the uncompressed bytes
 * (all zero for a ZERO marker, which has no payload). The sender pipelines extents without waiting;
 * the receiver answers with ACK {seq} after its store flushed every extent up to `seq` (durable).
 */

export const FRAME = { HELLO: 1, READY: 2, EXTENT: 3, SYNC: 4, ACK: 5, ERROR: 6 } as const;
export const CODEC = { RAW: 0, ZSTD: 1, ZERO: 2 } as const;
export type Codec = (typeof CODEC)[keyof typeof CODEC];

export const EXTENT_HEADER = 56;
/** Largest data extent (uncompressed) in one frame. */
export const MAX_DATA_EXTENT = 4 * 1024 * 1024;
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

export class ProtocolError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'ProtocolError';
    this.code = code;
  }
}

/**
 * Splits a byte stream into frames. Holds at most one frame plus one incoming chunk, and refuses
 * a declared frame length above `maxFrame` before buffering it.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Frame buffers given back by `recycle`, all of `freeSize` bytes. */
  private free: ArrayBuffer[] = [];
  private freeSize = 0;
  constructor(private readonly maxFrame = MAX_FRAME) {}

  /**
   * Give back the buffer of an owned frame that nothing uses any more. Frames of the same size
   * (raw 1 MiB extents are all alike) are then assembled into it: memory the kernel already mapped,
   * and no 1 MiB garbage per frame for the major GC.
   */
  recycle(ab: ArrayBufferLike): void {
    if (ab instanceof ArrayBuffer && ab.byteLength === this.freeSize && this.free.length < 8) this.free.push(ab);
  }

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /**
   * The next complete frame, or null when more bytes are needed. Throws ProtocolError on a bad length.
   * `owned`: the body's ArrayBuffer holds only this frame (it may be transferred to a worker).
   */
  next(): { type: number; body: Buffer; owned: boolean } | null {
    if (this.buffered < 5) return null;
    const head = this.peek(5);
    const len = head.readUInt32BE(0);
    if (len < 1 || len > this.maxFrame) {
      throw new ProtocolError('BAD_FRAME_LENGTH', `frame length ${len} is outside 1..${this.maxFrame}`);
    }
    if (this.buffered < 4 + len) return null;
    const { buf: all, owned } = this.take(4 + len);
    return { type: all.readUInt8(4), body: all.subarray(5), owned };
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!.subarray(0, n);
    return Buffer.concat(this.chunks, Math.min(this.buffered, Math.max(n, 64))).subarray(0, n);
  }

  private take(n: number): { buf: Buffer; owned: boolean } {
    const first = this.chunks[0]!;
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift(); else this.chunks[0] = first.subarray(n);
      this.buffered -= n;
      return { buf: out, owned: false };
    }
    const reuse = n === this.freeSize ? this.free.pop() : undefined;
    if (n !== this.freeSize && n > 65536) { this.freeSize = n; this.free = []; }
    const out = reuse ? Buffer.from(reuse, 0, n) : Buffer.allocUnsafeSlow(n);
    let pos = 0;
    while (pos < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - pos);
      c.copy(out, pos, 0, k);
      pos += k;
      if (k === c.length) this.chunks.shift(); else this.chunks[0] = c.subarray(k);
    }
    this.buffered -= n;
    return { buf: out, owned: true };
  }
}

export function parseJsonBody(body: Buffer): Record<string, unknown> {
  if (body.length > MAX_JSON_FRAME) throw new ProtocolError('BAD_FRAME_LENGTH', `control frame of ${body.length} bytes is too long`);
  let v: unknown;
  try { v = JSON.parse(body.toString('utf8')); } catch { throw new ProtocolError('BAD_FRAME', 'control frame is not valid JSON'); }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new ProtocolError('BAD_FRAME', 'control frame is not a JSON object');
  return v as Record<string, unknown>;
}

/** Error body of the control API and of ERROR frames. */
export interface WireError { code: string; message: string; fix?: string }

/** Headers of the control API. */
export const HDR_SOURCE = 'x-vmlift-source';

/** Errors that end a cycle session for good (no reconnect would help). */
export const FATAL_CODES = new Set([
  'AUTH', 'BAD_ID', 'BAD_DIGEST', 'BAD_FRAME', 'BAD_FRAME_LENGTH', 'BAD_LENGTH', 'OUT_OF_RANGE', 'BAD_DISK',
  'BAD_CODEC', 'BAD_REQUEST', 'CODE_EXPIRED', 'CODE_USED_UP', 'CODE_UNKNOWN', 'ALREADY_REGISTERED',
  'MISSING_EXTENTS', 'CHECKSUM_MISMATCH', 'CYCLE_OPEN', 'FINGERPRINT_MISMATCH',
]);
