import type { BlockSource } from './types.ts';
import { wrapSource } from './wrap.ts';

/**
 * `inner` with reads of at most `maxReadSize` bytes (never more than inner's own limit): its
 * maxReadSize says so, and a longer read is made as several reads of that size, one after another.
 */
export function clampReads<S extends BlockSource>(inner: S, maxReadSize = inner.maxReadSize): S {
  const max = Math.max(1, Math.min(maxReadSize, inner.maxReadSize));
  return wrapSource(inner, {
    maxReadSize: max,
    read: async (offset, length) => {
      if (length <= max) return inner.read(offset, length);
      const out = Buffer.allocUnsafe(length);
      for (let at = 0; at < length; at += max) {
        const piece = Math.min(max, length - at);
        // a reader that fills the caller's buffer needs no copy of each piece
        if (inner.readInto) await inner.readInto(offset + at, out.subarray(at, at + piece));
        else (await inner.read(offset + at, piece)).copy(out, at);
      }
      return out;
    },
    readInto: inner.readInto && (async (offset, target) => {
      if (target.length <= max) return inner.readInto!(offset, target);
      for (let at = 0; at < target.length; at += max) await inner.readInto!(offset + at, target.subarray(at, Math.min(target.length, at + max)));
    }),
  });
}
