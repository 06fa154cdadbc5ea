/**
 * Read handles of sealed packs, kept open while reads keep coming. A cycle's sub-chunk overlays and
 * an export read the same few packs thousands of times; an open and a close per read cost two more
 * trips through the thread pool than the read itself. Sealed packs never change, so a handle stays
 * right until the pack is deleted. Handles idle for IDLE_MS close, and so do those of packs the index
 * forgets, so a pack that gc deleted frees its space soon after.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { basename } from 'node:path';
import { StoreError } from './types.ts';

const IDLE_MS = 1000;
const MAX_OPEN = 32;

interface Held { fh: Promise<FileHandle>; busy: number; usedAt: number }

export class PackReaders {
  private readonly held = new Map<string, Held>();
  private timer: NodeJS.Timeout | null = null;

  /** Exactly `length` bytes at `offset` of the pack at `path`, into `into` when given; PACK_TRUNCATED past its end. */
  async read(path: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const h = this.acquire(path);
    try {
      return await readFullyAt(await h.fh, offset, length, into, path);
    } finally {
      h.busy--;
      h.usedAt = Date.now();
    }
  }

  /** Close the handle of `path` (its pack is gone or going). */
  drop(path: string): void {
    const h = this.held.get(path);
    if (!h) return;
    this.held.delete(path);
    void closeWhenIdle(h);
  }

  async closeAll(): Promise<void> {
    if (this.timer) { clearInterval(this.timer); this.timer = null; }
    const all = [...this.held.values()];
    this.held.clear();
    await Promise.all(all.map(closeWhenIdle));
  }

  private acquire(path: string): Held {
    let h = this.held.get(path);
    if (!h) {
      h = { fh: open(path, 'r'), busy: 0, usedAt: Date.now() };
      const mine = h;
      // a failed open (ENOENT: gc took the pack) is not kept
      h.fh.catch(() => { if (this.held.get(path) === mine) this.held.delete(path); });
      this.held.set(path, h);
      if (this.held.size > MAX_OPEN) this.evictOldest();
      this.timer ??= setInterval(() => this.closeIdle(), IDLE_MS).unref();
    }
    h.busy++;
    return h;
  }

  private evictOldest(): void {
    let oldest: [string, Held] | null = null;
    for (const e of this.held) if (e[1].busy === 0 && (!oldest || e[1].usedAt < oldest[1].usedAt)) oldest = e;
    if (oldest) this.drop(oldest[0]);
  }

  private closeIdle(): void {
    const now = Date.now();
    for (const [path, h] of this.held) if (h.busy === 0 && now - h.usedAt >= IDLE_MS) this.drop(path);
    if (this.held.size === 0 && this.timer) { clearInterval(this.timer); this.timer = null; }
  }
}

/**
 * Exactly `length` bytes at `offset` of the open pack file at `path`, into the start of `into` when
 * given (a buffer the caller reuses) instead of a new buffer. A sealed pack holds every byte its index
 * names, so a file that ends sooner is damaged: PACK_TRUNCATED, never zeros in an image or an export.
 */
export async function readFullyAt(fh: FileHandle, offset: number, length: number, into: Buffer | undefined, path: string): Promise<Buffer> {
  const out = into ? into.subarray(0, length) : Buffer.allocUnsafeSlow(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fh.read(out, done, length - done, offset + done);
    if (bytesRead === 0) throw truncatedPack(packIdOf(path), offset + done, offset + length, 'nothing is read from it as zeros');
    done += bytesRead;
  }
  return out;
}

/** The pack file `id` is `size` bytes, but bytes up to `end` were needed: it is damaged. */
export function truncatedPack(id: string, size: number, end: number, consequence: string): StoreError {
  return new StoreError('PACK_TRUNCATED', `pack ${id} is ${size} bytes but its index names chunks up to byte ${end}: it is damaged, ${consequence}`,
    { fix: 'run `vmlift image verify` to find the images that read it, and restore the store folder from a backup or re-sync those disks' });
}

const packIdOf = (path: string) => basename(path).replace(/\.pack$/, '');

/** Close once the reads in flight on it are done (a dropped handle is no longer handed out). */
async function closeWhenIdle(h: Held): Promise<void> {
  while (h.busy > 0) await new Promise((r) => setTimeout(r, 5));
  const fh = await h.fh.catch(() => null);
  await fh?.close().catch(() => {});
}
