/**
 * The tree digest: the wire digest of a data extent and the name of a store chunk (docs/design.md,
 * contracts). The SHA-256 of
 *
 *   "vmlift-tree1" (12 bytes) ‖ u64 BE length ‖ SHA-256 of each 4 KiB block, in order (the last may be short)
 *
 * A sender needs the 4 KiB block digests anyway (the agent's manifest), so it derives the wire
 * digest from them; the receiver checks an extent by hashing each byte once, and the store names
 * the chunk by the digest it checked. No byte is hashed twice on either side. The native digester
 * (native/digest/) computes the same digests off the event loop; this module is the JavaScript form.
 */
import * as nodeCrypto from 'node:crypto';
import { INLINE_HASH_MAX, nativeDigest } from './native-digest.ts';

/** Leaves of the tree: 4 KiB blocks, the agent's manifest block size. */
export const TREE_BLOCK = 4096;
export const TREE_TAG = Buffer.from('vmlift-tree1', 'latin1');
/** Names the chunk-naming function in formats that record it (the store's and the wire's). */
export const TREE_DIGEST_NAME = 'sha256-tree-4k';

/**
 * The tree digest in JavaScript, given node:crypto. Self-contained (no references to this module):
 * codec workers run it from its source text.
 */
export function makeTreeDigest(c: typeof import('node:crypto')): { fromBlocks(length: number, blockDigests: Uint8Array): Buffer; of(data: Uint8Array): Buffer } {
  const B = 4096;
  const tag = Buffer.from('vmlift-tree1', 'latin1');
  // one-shot crypto.hash (Node >= 20.12) skips a Hash object per 4 KiB block
  const oneShot = (c as { hash?: (alg: string, b: Uint8Array, enc: 'buffer') => Buffer }).hash;
  const sha = oneShot ? (b: Uint8Array) => oneShot('sha256', b, 'buffer') : (b: Uint8Array) => c.createHash('sha256').update(b).digest();
  const fromBlocks = (length: number, blockDigests: Uint8Array): Buffer => {
    const n = Math.ceil(length / B);
    if (blockDigests.length < n * 32) throw new RangeError(`tree digest: ${blockDigests.length / 32} block digests for ${n} blocks`);
    const head = Buffer.allocUnsafe(20);
    tag.copy(head, 0);
    head.writeBigUInt64BE(BigInt(length), 12);
    return c.createHash('sha256').update(head).update(blockDigests.subarray(0, n * 32)).digest();
  };
  const of = (data: Uint8Array): Buffer => {
    const n = Math.ceil(data.length / B);
    const blocks = Buffer.allocUnsafe(n * 32);
    for (let i = 0; i < n; i++) blocks.set(sha(data.subarray(i * B, Math.min(data.length, (i + 1) * B))), i * 32);
    return fromBlocks(data.length, blocks);
  };
  return { fromBlocks, of };
}

const js = makeTreeDigest(nodeCrypto);

/** The tree digest of `length` bytes from the full (32-byte) SHA-256 digests of their 4 KiB blocks. */
export const treeDigestFromBlocks: (length: number, blockDigests: Uint8Array) => Buffer = js.fromBlocks;

/** The tree digest of `data`, on this thread, in JavaScript. */
export const treeDigest: (data: Uint8Array) => Buffer = js.of;

/** The tree digest of `data` (up to INLINE_HASH_MAX bytes), on this thread: natively when the library is built. */
export function treeDigestHere(data: Uint8Array): Buffer {
  const native = nativeDigest();
  return native ? native.treeHere(data) : treeDigest(data);
}

/** `n` rounded up to whole tree blocks: a `piece` for NativeDigest.blocks that covers all of an `n`-byte buffer. */
export function wholeTreeBlocks(n: number): number { return Math.max(TREE_BLOCK, Math.ceil(n / TREE_BLOCK) * TREE_BLOCK); }

/** The tree digest of `data`: natively off the event loop when it is large and the library is built. */
export async function treeDigestAsync(data: Uint8Array): Promise<Buffer> {
  const native = data.length > INLINE_HASH_MAX ? nativeDigest() : null;
  return native ? native.tree(data) : treeDigestHere(data);
}

const zeroDigests = new Map<number, Buffer>();
/** The tree digest of `length` zero bytes (cached). */
export function zeroTreeDigest(length: number): Buffer {
  let d = zeroDigests.get(length);
  if (!d) {
    d = treeDigest(Buffer.alloc(length));
    if (zeroDigests.size < 64) zeroDigests.set(length, d);
  }
  return d;
}
