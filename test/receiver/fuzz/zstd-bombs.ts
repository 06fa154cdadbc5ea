/**
 * Hand-made zstd frames for the decompression-bomb cases: a frame of RLE blocks (4 bytes each
 * decompress to 128 KiB, so 32 KiB of payload claim 1 GiB) with or without a content size in its
 * header, and a real small frame whose header's content size is patched.
 */
import { compress } from 'zstd-napi';

const ZSTD_MAGIC = 0xfd2fb528;
const BLOCK = 128 * 1024;

/**
 * One zstd frame whose blocks are RLE blocks of `byte` decompressing to `total` bytes.
 * `claim`: the frame content size written in the header (8 bytes); undefined: none.
 */
export function rleFrame(total: number, opts: { claim?: number; byte?: number } = {}): Buffer {
  const blocks = Math.max(1, Math.ceil(total / BLOCK));
  const hasSize = opts.claim !== undefined;
  // descriptor: FCS flag 3 (8 bytes) when a size is claimed; not single-segment, so a window byte follows (2^17 = 128 KiB)
  const header = Buffer.alloc(4 + 1 + 1 + (hasSize ? 8 : 0));
  header.writeUInt32LE(ZSTD_MAGIC, 0);
  header[4] = hasSize ? 0xc0 : 0x00;
  header[5] = 7 << 3;
  if (hasSize) header.writeBigUInt64LE(BigInt(opts.claim!), 6);
  const body = Buffer.alloc(blocks * 4);
  for (let i = 0; i < blocks; i++) {
    const n = Math.min(BLOCK, total - i * BLOCK);
    const last = i === blocks - 1 ? 1 : 0;
    body.writeUIntLE(last | (1 << 1) | (n << 3), i * 4, 3); // block header: last, type 1 (RLE), size
    body[i * 4 + 3] = opts.byte ?? 0x41;
  }
  return Buffer.concat([header, body]);
}

/** A real frame of `data` whose header claims `claim` bytes instead (zstd-napi writes an 8-byte size for ≥ 4 GiB... so: patched in place). */
export function patchedSizeFrame(data: Buffer, claim: number): Buffer {
  const f = Buffer.from(compress(data));
  const fhd = f[4]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const didFlag = fhd & 3;
  const pos = 5 + (single ? 0 : 1) + [0, 1, 2, 4][didFlag]!;
  const width = [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
  if (width === 8) f.writeBigUInt64LE(BigInt(claim), pos);
  else if (width === 4) f.writeUInt32LE(claim >>> 0, pos);
  else if (width === 2) f.writeUInt16LE(Math.max(0, claim - 256) & 0xffff, pos);
  else if (width === 1) f[pos] = claim & 0xff;
  return f;
}
