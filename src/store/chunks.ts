import { open, readFile, rename, unlink, utimes, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir } from '../util/fsync.ts';
import type { Layout } from './layout.ts';
import { dropFromCache, hasSyncfs, syncfs } from './native.ts';
import { treeDigestAsync, zeroTreeDigest } from '../util/tree-digest.ts';
import { writeFully } from '../util/write-fully.ts';

/**
 * The one function that names chunks and sub-chunks: the tree digest of their bytes
 * (util/tree-digest.ts: SHA-256 over the SHA-256 of each 4 KiB block), which is also the wire
 * digest of an extent of those bytes. So the receiver names a chunk by the digest it just checked
 * and hashes each byte once. Off the main thread for large inputs (native when built, in place);
 * inputs up to INLINE_HASH_MAX (a sub-chunk) hash inline: cheaper than a thread hop.
 */
export function chunkDigest(data: Uint8Array): Promise<Buffer> {
  return treeDigestAsync(data);
}

/** `b` cut or zero-padded to `len` bytes (a chunk file read as the slot length it fills). */
export function fitLength(b: Buffer, len: number): Buffer {
  if (b.length === len) return b;
  const out = Buffer.alloc(len);
  b.copy(out, 0, 0, Math.min(len, b.length));
  return out;
}

/** The name of `len` zero bytes (cached): a chunk with this digest is a hole. */
export const zeroDigest: (len: number) => Buffer = zeroTreeDigest;

export function isZeroSlot(slot: Uint8Array): boolean {
  for (let i = 0; i < slot.length; i++) if (slot[i] !== 0) return false;
  return true;
}

let tmpCounter = 0;

/**
 * Chunk files for one cycle writer. A new chunk is written to a temp name in its directory and
 * only gets its final (content) name after an fsync ("promotion", batched), so a final name is
 * always complete and durable: other writers may dedup against any final name.
 */
export class ChunkWriter {
  /** hex -> temp file (still open) of chunks written but not yet promoted. */
  private readonly pending = new Map<string, { tmp: string; fh: FileHandle; size: number }>();
  /** hex -> the put writing it now (a second put of the same chunk waits for the first). */
  private readonly putting = new Map<string, Promise<void>>();
  private readonly promoting = new Set<Promise<void>>();
  private readonly inPromotion = new Set<string>();
  private readonly dirtyDirs = new Set<string>();
  /** Chunks this writer knows exist and protected by its refs journal. */
  private readonly confirmed = new Set<string>();
  newChunks = 0;
  newBytes = 0;

  constructor(private readonly layout: Layout, private readonly noteRef: (hex: string) => Promise<void>,
    private readonly promoteFiles = 128, private readonly promoteBytes = 32 << 20) {}

  private pendingBytes = 0;

  /** A batch is due: enough files (each holds an open descriptor) or enough bytes (one syncfs each). */
  private batchDue(factor: number): boolean {
    return this.pending.size >= this.promoteFiles * factor || this.pendingBytes >= this.promoteBytes * factor;
  }

  /** Make sure a chunk named `hex` with content `data` exists (or will on the next `sync`). */
  put(hex: string, data: Uint8Array): Promise<void> {
    if (this.pending.has(hex) || this.confirmed.has(hex)) return Promise.resolve();
    let p = this.putting.get(hex);
    if (!p) {
      p = this.doPut(hex, data).finally(() => this.putting.delete(hex));
      this.putting.set(hex, p);
    }
    return p;
  }

  private async doPut(hex: string, data: Uint8Array): Promise<void> {
    // Journal the reference before touching the chunk: gc either sees the journal entry, or runs its
    // mark before it and then sees an mtime newer than its start (see gc.ts).
    await this.noteRef(hex);
    const now = new Date();
    try {
      await utimes(this.layout.chunkPath(hex), now, now);
      this.confirmed.add(hex);
      this.dirtyDirs.add(this.layout.chunkDir(hex));
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const tmp = join(this.layout.chunkDir(hex), `.tmp-${process.pid}-${(tmpCounter++).toString(36)}`);
    let fh: FileHandle | undefined;
    try {
      fh = await open(tmp, 'wx', 0o600);
      await writeFully(fh, data, 0);
    } catch (e) {
      await fh?.close().catch(() => {});
      await unlink(tmp).catch(() => {});
      throw e;
    }
    // Only complete temp files are pending (and so can be promoted or read). The file stays open
    // until promotion (at most 2 x promoteFiles per writer).
    this.pending.set(hex, { tmp, fh, size: data.length });
    this.pendingBytes += data.length;
    this.newChunks++;
    this.newBytes += data.length;
    if (this.batchDue(2)) {
      const p = this.promote();
      this.track(p);
      await p;
    } else if (this.batchDue(1) && this.promoting.size === 0) {
      this.track(this.promote());
    }
  }

  /** Bytes of chunk `hex`, also when it is still under its temp name. */
  async read(hex: string): Promise<Buffer> {
    await this.putting.get(hex)?.catch(() => {});
    const tmp = this.pending.get(hex)?.tmp;
    if (tmp) {
      try { return await readFile(tmp); } catch (e) { if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e; }
    }
    return readFile(this.layout.chunkPath(hex));
  }

  /** Bytes [offset, offset + length) of chunk `hex` (zeros past its end), also under its temp name. */
  async readRange(hex: string, offset: number, length: number): Promise<Buffer> {
    await this.putting.get(hex)?.catch(() => {});
    const out = Buffer.alloc(length);
    const tmp = this.pending.get(hex)?.tmp;
    for (const path of tmp ? [tmp, this.layout.chunkPath(hex)] : [this.layout.chunkPath(hex)]) {
      let fh: FileHandle;
      try { fh = await open(path, 'r'); } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT' && path === tmp) continue; // promoted meanwhile
        throw e;
      }
      try {
        for (let done = 0; done < length;) {
          const { bytesRead } = await fh.read(out, done, length - done, offset + done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
      } finally { await fh.close(); }
      return out;
    }
    throw new Error(`chunk ${hex} disappeared while being read`);
  }

  private track(p: Promise<void>): void {
    const q = p.catch(() => {}).finally(() => this.promoting.delete(q));
    this.promoting.add(q);
  }

  /** Make the pending chunks present now durable, then give them their final names. */
  private async promote(): Promise<void> {
    const batch = [...this.pending].filter(([hex]) => !this.inPromotion.has(hex));
    if (batch.length === 0) return;
    for (const [hex] of batch) this.inPromotion.add(hex);
    try {
      if (hasSyncfs()) await syncfs(batch[0]![1].fh.fd);
      await Promise.all(batch.map(async ([hex, { tmp, fh, size }]) => {
        try {
          if (!hasSyncfs()) await fh.sync();
          await dropFromCache(fh.fd);
        } finally { await fh.close().catch(() => {}); }
        await rename(tmp, this.layout.chunkPath(hex));
        this.confirmed.add(hex);
        this.dirtyDirs.add(this.layout.chunkDir(hex));
        this.pending.delete(hex);
        this.pendingBytes -= size;
      }));
    } finally {
      for (const [hex] of batch) this.inPromotion.delete(hex);
    }
  }

  /** Everything put so far is durable under its final name. */
  async sync(): Promise<void> {
    const want = [...this.pending.keys()];
    while (want.some((h) => this.pending.has(h))) {
      await Promise.all([...this.promoting]);
      const p = this.promote();
      this.track(p);
      await p;
    }
    const dirs = [...this.dirtyDirs];
    this.dirtyDirs.clear();
    try {
      if (dirs.length > 2 && hasSyncfs()) {
        // one syncfs makes all the renames durable (instead of one journal commit per folder)
        const fh = await open(dirs[0]!, 'r');
        try { await syncfs(fh.fd); } finally { await fh.close(); }
      } else {
        await Promise.all(dirs.map((d) => fsyncDir(d)));
      }
    } catch (e) {
      for (const d of dirs) this.dirtyDirs.add(d);
      throw e;
    }
  }

  /** Drop temp files (abort). */
  async discard(): Promise<void> {
    await Promise.all([...this.putting.values()].map((p) => p.catch(() => {})));
    await Promise.all([...this.promoting]);
    const tmps = [...this.pending.values()];
    this.pending.clear();
    this.pendingBytes = 0;
    await Promise.all(tmps.map(async ({ tmp, fh }) => { await fh.close().catch(() => {}); await unlink(tmp).catch(() => {}); }));
  }
}
