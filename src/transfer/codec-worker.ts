/**
 * Worker thread: packs (zero check, SHA-256, zstd) and unpacks (length check, zstd, SHA-256)
 * extents so both cores work while the main thread drives the sockets.
 */
import { parentPort } from 'node:worker_threads';
import { createHash } from 'node:crypto';
import { Compressor, Decompressor } from 'zstd-napi';
import { createRequire } from 'node:module';
import { CODEC } from './protocol.ts';

const { getFrameContentSize } = createRequire(import.meta.url)('zstd-napi/binding') as { getFrameContentSize(frame: Uint8Array): number | null };

const zeros = Buffer.alloc(1024 * 1024);
const compressors = new Map<number, Compressor>();
const decompressor = new Decompressor();

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i += zeros.length) {
    const n = Math.min(zeros.length, b.length - i);
    if (!b.subarray(i, i + n).equals(zeros.subarray(0, n))) return false;
  }
  return true;
}

function compressor(level: number): Compressor {
  let c = compressors.get(level);
  if (!c) {
    c = new Compressor();
    c.setParameters({ compressionLevel: level, contentSizeFlag: true, checksumFlag: false });
    compressors.set(level, c);
  }
  return c;
}

export type PackRequest = { id: number; op: 'pack'; data: Uint8Array; zstdLevel: number | null };
export type UnpackRequest = { id: number; op: 'unpack'; codec: number; payload: Uint8Array; length: number; digest: Uint8Array };
export type WorkerReply =
  | { id: number; ok: true; codec: number; payload: Uint8Array | null; digest: Uint8Array }
  | { id: number; ok: true; data: Uint8Array }
  | { id: number; ok: false; code: string; message: string };

function pack(r: PackRequest): WorkerReply {
  const data = Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength);
  if (isZero(data)) return { id: r.id, ok: true, codec: CODEC.ZERO, payload: null, digest: new Uint8Array(32) };
  const digest = createHash('sha256').update(data).digest();
  if (r.zstdLevel !== null) {
    const c = compressor(r.zstdLevel).compress(data);
    // Not worth a decompress on the other side unless it saves at least 3 %.
    if (c.length < data.length - (data.length >> 5)) return { id: r.id, ok: true, codec: CODEC.ZSTD, payload: c, digest };
  }
  return { id: r.id, ok: true, codec: CODEC.RAW, payload: r.data, digest };
}

function unpack(r: UnpackRequest): WorkerReply {
  const payload = Buffer.from(r.payload.buffer, r.payload.byteOffset, r.payload.byteLength);
  let data: Buffer;
  if (r.codec === CODEC.ZSTD) {
    let size: number | null;
    try { size = getFrameContentSize(payload); } catch { size = null; }
    if (size !== r.length) {
      return { id: r.id, ok: false, code: 'BAD_LENGTH', message: `compressed extent declares ${size ?? 'no'} bytes, frame header says ${r.length}` };
    }
    try { data = decompressor.decompress(payload); } catch (e) {
      return { id: r.id, ok: false, code: 'BAD_FRAME', message: `compressed extent does not decompress: ${(e as Error).message}` };
    }
    if (data.length !== r.length) return { id: r.id, ok: false, code: 'BAD_LENGTH', message: `extent decompressed to ${data.length} bytes, expected ${r.length}` };
  } else {
    data = payload;
  }
  const d = createHash('sha256').update(data).digest();
  if (!d.equals(Buffer.from(r.digest))) {
    return { id: r.id, ok: false, code: 'BAD_DIGEST', message: `extent digest mismatch: received ${Buffer.from(r.digest).toString('hex').slice(0, 16)}…, computed ${d.toString('hex').slice(0, 16)}…` };
  }
  return { id: r.id, ok: true, data };
}

parentPort!.on('message', (r: PackRequest | UnpackRequest) => {
  let reply: WorkerReply;
  try {
    reply = r.op === 'pack' ? pack(r) : unpack(r);
  } catch (e) {
    reply = { id: r.id, ok: false, code: 'INTERNAL', message: (e as Error).message };
  }
  const transfer: ArrayBuffer[] = [];
  const out = 'payload' in reply ? reply.payload : 'data' in reply ? reply.data : null;
  if (out && out.byteOffset === 0 && out.byteLength === out.buffer.byteLength && out.buffer instanceof ArrayBuffer) transfer.push(out.buffer);
  parentPort!.postMessage(reply, transfer);
});
