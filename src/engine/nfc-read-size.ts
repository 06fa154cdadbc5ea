import type { Logger } from 'pino';
import type { BlockSource } from '../source/types.ts';
import { wrapSource } from '../source/wrap.ts';

/** The smallest read the halving goes down to (VDDK reads whole 512-byte sectors). */
export const MIN_NFC_READ = 64 * 1024;

/** The largest power of two at most half of `length`: NFC buffers come in powers of two, so a refused read of 1 MiB + 64 KiB goes to 512 KiB at once rather than to 544 KiB and then 272 KiB. */
function halfAsPowerOfTwo(length: number): number {
  return 2 ** Math.floor(Math.log2(length / 2));
}

/**
 * `source` (one disk) whose reads shrink when the host's NFC server refuses one as too large for its
 * buffers (`isNfc`: VDDK's NFC resource error, "failed to allocate the requested N bytes"): the disk's
 * read size becomes the largest power of two at most half the refused read (down to MIN_NFC_READ), logged, and longer reads are made as several of that size
 * from then on. The error still goes up, so the per-host limiter backs off and tries the read again, now
 * in smaller pieces; a host short of memory rather than of buffer size gets both remedies.
 */
export function shrinkingOnNfc<S extends BlockSource>(source: S, isNfc: (e: unknown) => boolean, log: Logger, where: Record<string, unknown>): S {
  let max = source.maxReadSize;
  const halveAfter = (e: unknown, length: number): never => {
    // the size becomes a power of two at most half the refused read; reads in flight at an older, larger size change nothing more
    if (isNfc(e) && length > MIN_NFC_READ && length <= max) {
      const before = max;
      max = Math.max(MIN_NFC_READ, halfAsPowerOfTwo(length));
      log.warn({ ...where, failedReadBytes: length, readSizeBefore: before, readSize: max },
        'NFC refused a read as too large for its buffers: halved this disk\'s read size');
    }
    throw e;
  };
  const readInto = source.readInto && (async (offset: number, target: Buffer): Promise<void> => {
    for (let at = 0; at < target.length;) {
      const piece = target.subarray(at, at + Math.min(max, target.length - at));
      await source.readInto!(offset + at, piece).catch((e: unknown) => halveAfter(e, piece.length));
      at += piece.length;
    }
  });
  return wrapSource(source, {
    readInto,
    read: async (offset, length) => {
      if (length <= max) return source.read(offset, length).catch((e: unknown) => halveAfter(e, length));
      const out = Buffer.allocUnsafe(length);
      if (readInto) { await readInto(offset, out); return out; }
      for (let at = 0; at < length;) {
        const n = Math.min(max, length - at);
        (await source.read(offset + at, n).catch((e: unknown) => halveAfter(e, n))).copy(out, at);
        at += n;
      }
      return out;
    },
  });
}
