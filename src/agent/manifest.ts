/**
 * Block-digest manifests: one file per disk holding, for every 4 KiB block in order, the first
 * 16 bytes of the block's SHA-256. Read and written sequentially through a small buffer, so a
 * 64 GiB disk (256 MiB of digests) costs 1 MiB of memory.
 */
import { createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';

export const BLOCK_SIZE = 4096;
export const DIGEST_SIZE = 16;
const IO_BYTES = 1024 * 1024;

const zeroDigests = new Map<number, Buffer>();
/** Digest of an all-zero block of `length` bytes (the last block of a disk may be short). */
export function zeroDigest(length = BLOCK_SIZE): Buffer {
  let d = zeroDigests.get(length);
  if (!d) {
    d = createHash('sha256').update(Buffer.alloc(length)).digest().subarray(0, DIGEST_SIZE);
    zeroDigests.set(length, d);
  }
  return d;
}

export function blockCount(capacity: number, blockSize = BLOCK_SIZE): number {
  return Math.ceil(capacity / blockSize);
}

/** Sequential reader of an old manifest; blocks past its end (or with no file) read as zero digests. */
export class ManifestReader {
  private fh: FileHandle | undefined;
  private buf = Buffer.alloc(0);
  private bufStart = 0; // block index of buf[0]
  private readonly blocks: number;
  private readonly lastLen: number;
  private fileBlocks: number;

  private constructor(fh: FileHandle | undefined, fileBlocks: number, capacity: number) {
    this.fh = fh;
    this.fileBlocks = fileBlocks;
    this.blocks = blockCount(capacity);
    this.lastLen = capacity - (this.blocks - 1) * BLOCK_SIZE;
  }

  /** `path` null: no base image, every block's old digest is the zero digest. */
  static async open(path: string | null, capacity: number): Promise<ManifestReader> {
    if (path === null) return new ManifestReader(undefined, 0, capacity);
    const fh = await open(path, 'r');
    const st = await fh.stat();
    return new ManifestReader(fh, Math.floor(st.size / DIGEST_SIZE), capacity);
  }

  /** No old digests at all (a first cycle): every allocated block will count as changed. */
  get isEmpty(): boolean {
    return this.fileBlocks === 0;
  }

  /** Old digests of blocks [first, first+count) as one buffer of count*16 bytes. Calls must go forward. */
  async get(first: number, count: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(count * DIGEST_SIZE);
    // in runs, not per block: a window is 256 blocks and this is called for every one
    let i = 0;
    while (i < count) {
      const b = first + i;
      if (b >= this.fileBlocks) {
        const last = first + count - 1 === this.blocks - 1 && this.lastLen !== BLOCK_SIZE;
        const end = last ? count - 1 : count;
        if (end > i) out.fill(zeroDigest(), i * DIGEST_SIZE, end * DIGEST_SIZE);
        if (last) zeroDigest(this.lastLen).copy(out, (count - 1) * DIGEST_SIZE);
        break;
      }
      if (b < this.bufStart || b >= this.bufStart + this.buf.length / DIGEST_SIZE) await this.fill(b);
      if (b >= this.fileBlocks) continue; // the file was shorter than it said
      const n = Math.min(count - i, this.bufStart + this.buf.length / DIGEST_SIZE - b, this.fileBlocks - b);
      const at = (b - this.bufStart) * DIGEST_SIZE;
      this.buf.copy(out, i * DIGEST_SIZE, at, at + n * DIGEST_SIZE);
      i += n;
    }
    return out;
  }

  private async fill(block: number): Promise<void> {
    const want = Math.min(IO_BYTES, (this.fileBlocks - block) * DIGEST_SIZE);
    const buf = this.buf.length === IO_BYTES ? this.buf : Buffer.allocUnsafe(IO_BYTES);
    let got = 0;
    while (got < want) {
      const { bytesRead } = await this.fh!.read(buf, got, want - got, block * DIGEST_SIZE + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    this.buf = buf.subarray(0, got - (got % DIGEST_SIZE));
    if (this.buf.length === 0) this.fileBlocks = block; // shorter than it said: treat the rest as zero
    this.bufStart = block;
  }

  async close(): Promise<void> {
    await this.fh?.close();
    this.fh = undefined;
  }
}

/** Sequential writer of a new manifest. */
export class ManifestWriter {
  private readonly fh: FileHandle;
  private buf = Buffer.allocUnsafe(IO_BYTES);
  private used = 0;
  private pos = 0;

  private constructor(fh: FileHandle) { this.fh = fh; }

  static async create(path: string): Promise<ManifestWriter> {
    return new ManifestWriter(await open(path, 'w', 0o600));
  }

  async append(digests: Uint8Array): Promise<void> {
    let off = 0;
    while (off < digests.length) {
      const n = Math.min(digests.length - off, this.buf.length - this.used);
      this.buf.set(digests.subarray(off, off + n), this.used);
      this.used += n;
      off += n;
      if (this.used === this.buf.length) await this.flush();
    }
  }

  private async flush(): Promise<void> {
    let done = 0;
    while (done < this.used) {
      const { bytesWritten } = await this.fh.write(this.buf, done, this.used - done, this.pos + done);
      done += bytesWritten;
    }
    this.pos += this.used;
    this.used = 0;
  }

  /** Flush, fsync and close. */
  async finish(): Promise<number> {
    await this.flush();
    await this.fh.sync();
    await this.fh.close();
    return this.pos;
  }

  async discard(): Promise<void> {
    await this.fh.close().catch(() => {});
  }
}
