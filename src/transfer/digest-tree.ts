/**
 * Source digest trees (the `tree` form of SourceDigest; docs/design.md, contracts): a fixed-size
 * root over everything a sender read of a disk, whatever the disk's size, which the receiver
 * recomputes in one pass over the staged image before it publishes it.
 *
 *   leaves: the pieces of `ranges` (sorted, disjoint) cut at absolute multiples of PIECE_SIZE —
 *           the pieces the data frames carry — in offset order;
 *   leaf:   offset (u64 BE) ‖ length (u64 BE) ‖ digest, where digest is the tree digest of the piece's
 *           bytes (util/tree-digest.ts: over its 4 KiB blocks' SHA-256), or 32 zero bytes when they
 *           are all zeros (as a zero marker's);
 *   root:   SHA-256 of the concatenated leaves, in hex.
 *
 * A piece's digest is its frame's digest: a sender computes it once (`pieceDigests`), folds it
 * into the tree and hands it to `send` (SendOptions.digest).
 */
import { createHash, type Hash } from 'node:crypto';
import { PIECE_SIZE } from './protocol.ts';
import { INLINE_HASH_MAX, nativeDigest } from '../util/native-digest.ts';
import { TREE_BLOCK, treeDigestHere, wholeTreeBlocks } from '../util/tree-digest.ts';
import { split, type Range } from '../model/ranges.ts';

const LEAF = 8 + 8 + 32;
const ZERO_DIGEST = Buffer.alloc(32);
const zeroPage = Buffer.alloc(64 * 1024);

function isAllZero(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; i += zeroPage.length) {
    const n = Math.min(zeroPage.length, b.length - i);
    if (!Buffer.from(b.buffer, b.byteOffset + i, n).equals(zeroPage.subarray(0, n))) return false;
  }
  return true;
}

function leafRecord(offset: number, length: number, digest: Uint8Array): Buffer {
  const b = Buffer.allocUnsafe(LEAF);
  b.writeBigUInt64BE(BigInt(offset), 0);
  b.writeBigUInt64BE(BigInt(length), 8);
  b.set(digest.subarray(0, 32), 16);
  return b;
}

/** Digest of one piece: the tree digest of its bytes, or 32 zero bytes when all are zero. */
async function pieceDigest(data: Uint8Array): Promise<Buffer> {
  const native = data.length > INLINE_HASH_MAX ? nativeDigest() : null;
  if (native) {
    const r = await native.blocks(data, TREE_BLOCK, 1, wholeTreeBlocks(data.length));
    return r.zero.every((z) => z === 1) ? Buffer.from(ZERO_DIGEST) : r.pieceDigests!;
  }
  return isAllZero(data) ? Buffer.from(ZERO_DIGEST) : treeDigestHere(data);
}

/**
 * The digests of the pieces of `data` (at `offset` of its disk, cut at absolute multiples of
 * PIECE_SIZE), 32 bytes each, concatenated: what a tree's leaves and SendOptions.digest take.
 * Large pieces are hashed off the event loop when the native digester is there.
 */
export async function pieceDigests(offset: number, data: Uint8Array): Promise<Buffer> {
  const pieces = [...split([{ offset, length: data.length }], PIECE_SIZE)];
  const out = await Promise.all(pieces.map((p) => pieceDigest(data.subarray(p.offset - offset, p.offset - offset + p.length))));
  return Buffer.concat(out);
}

/**
 * Folds piece digests into the root of `ranges`, in any order they arrive (reads finish out of
 * order): a leaf waits until those before it are in, so what waits is bounded by the reads in flight.
 */
export class DigestTree {
  private readonly hash: Hash = createHash('sha256');
  private readonly leaves: Generator<Range>;
  private next: IteratorResult<Range>;
  private readonly waiting = new Map<number, { length: number; digest: Buffer }>();

  constructor(ranges: Iterable<Range>) {
    this.leaves = split(ranges, PIECE_SIZE);
    this.next = this.leaves.next();
  }

  /** The `digests` (from `pieceDigests`) of the `length` bytes read at `offset`. */
  add(offset: number, length: number, digests: Buffer): void {
    let k = 0;
    for (const p of split([{ offset, length }], PIECE_SIZE)) {
      this.waiting.set(p.offset, { length: p.length, digest: digests.subarray(k * 32, (k + 1) * 32) });
      k++;
    }
    if (k * 32 !== digests.length) throw new RangeError(`digest tree: ${digests.length / 32} digests for ${k} pieces at offset ${offset}`);
    for (let w; !this.next.done && (w = this.waiting.get(this.next.value.offset));) {
      if (w.length !== this.next.value.length) {
        throw new RangeError(`digest tree: piece at ${this.next.value.offset} has ${w.length} bytes, the ranges say ${this.next.value.length}`);
      }
      this.waiting.delete(this.next.value.offset);
      this.hash.update(leafRecord(this.next.value.offset, w.length, w.digest));
      this.next = this.leaves.next();
    }
  }

  /** The root, once every piece of the ranges is in. */
  root(): string {
    if (!this.next.done || this.waiting.size > 0) {
      const at = this.next.done ? [...this.waiting.keys()][0] : this.next.value.offset;
      throw new RangeError(`digest tree: the piece at offset ${at} is missing or outside the ranges`);
    }
    return this.hash.digest('hex');
  }
}

/**
 * The root of `ranges` over bytes read by `read` (at most `batch` bytes a call, in offset order):
 * the receiver's side, over the staged image.
 */
export async function treeRootOf(ranges: readonly Range[], read: (offset: number, length: number) => Promise<Buffer>, batch = 8 * PIECE_SIZE): Promise<string> {
  const tree = new DigestTree(ranges);
  for (const r of split(ranges, batch)) {
    const data = await read(r.offset, r.length);
    tree.add(r.offset, r.length, await pieceDigests(r.offset, data));
  }
  return tree.root();
}
