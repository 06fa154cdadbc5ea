import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { DigestTree, pieceDigests, treeRootOf } from '../../src/transfer/digest-tree.ts';
import { PIECE_SIZE } from '../../src/transfer/protocol.ts';

const MiB = 1 << 20;

/** A piece's digest written out longhand (docs/design.md): SHA-256 of "vmlift-tree1" | u64 length | SHA-256 of each 4 KiB block. */
function pieceByHand(bytes: Buffer): Buffer {
  const h = createHash('sha256').update('vmlift-tree1');
  const len = Buffer.alloc(8); len.writeBigUInt64BE(BigInt(bytes.length));
  h.update(len);
  for (let o = 0; o < bytes.length; o += 4096) h.update(createHash('sha256').update(bytes.subarray(o, Math.min(bytes.length, o + 4096))).digest());
  return h.digest();
}

/** The tree of docs/design.md written out longhand: leaves = 1 MiB-aligned pieces of the ranges, offset|length|digest. */
function byHand(disk: Buffer, ranges: { offset: number; length: number }[]): string {
  const root = createHash('sha256');
  for (const r of ranges) {
    for (let o = r.offset; o < r.offset + r.length;) {
      const end = Math.min(r.offset + r.length, (Math.floor(o / MiB) + 1) * MiB);
      const bytes = disk.subarray(o, end);
      const leaf = Buffer.alloc(48);
      leaf.writeBigUInt64BE(BigInt(o), 0);
      leaf.writeBigUInt64BE(BigInt(end - o), 8);
      if (bytes.some((b) => b !== 0)) pieceByHand(bytes).copy(leaf, 16);
      root.update(leaf);
      o = end;
    }
  }
  return root.digest('hex');
}

test('the digest tree root is the documented one, whatever the order the reads arrive in', async () => {
  assert.equal(PIECE_SIZE, MiB);
  const disk = randomBytes(12 * MiB);
  disk.fill(0, 4 * MiB, 6 * MiB); // all-zero pieces: a zero digest
  const ranges = [{ offset: 4096, length: 3 * MiB }, { offset: 4 * MiB - 512, length: 5 * MiB + 1024 }, { offset: 11 * MiB, length: MiB }];
  const want = byHand(disk, ranges);
  assert.equal(await treeRootOf(ranges, async (o, l) => disk.subarray(o, o + l)), want);
  // reads of 2 MiB (cut at multiples of 2 MiB, as the engine's), added in reverse order
  const reads: { offset: number; length: number }[] = [];
  for (const r of ranges) for (let o = r.offset; o < r.offset + r.length;) { const e = Math.min(r.offset + r.length, (Math.floor(o / (2 * MiB)) + 1) * 2 * MiB); reads.push({ offset: o, length: e - o }); o = e; }
  const tree = new DigestTree(ranges);
  for (const r of reads.reverse()) tree.add(r.offset, r.length, await pieceDigests(r.offset, disk.subarray(r.offset, r.offset + r.length)));
  assert.equal(tree.root(), want);
  // one changed byte changes the root
  const other = Buffer.from(disk); other[11 * MiB + 3] ^= 1;
  assert.notEqual(byHand(other, ranges), want);
});

test('piece digests: one per 1 MiB-aligned piece, zeros for an all-zero piece', async () => {
  const data = randomBytes(3 * MiB);
  data.fill(0, MiB - 4096, 2 * MiB - 4096);
  const d = await pieceDigests(4096, data);
  assert.equal(d.length, 4 * 32);
  assert.deepEqual(d.subarray(0, 32), pieceByHand(data.subarray(0, MiB - 4096)));
  assert.deepEqual(d.subarray(32, 64), Buffer.alloc(32));
  assert.deepEqual(d.subarray(96, 128), pieceByHand(data.subarray(3 * MiB - 4096)));
});

test('a piece missing or outside the ranges is an error, not a root over less', async () => {
  const disk = randomBytes(4 * MiB);
  const tree = new DigestTree([{ offset: 0, length: 3 * MiB }]);
  tree.add(0, MiB, await pieceDigests(0, disk.subarray(0, MiB)));
  tree.add(2 * MiB, MiB, await pieceDigests(2 * MiB, disk.subarray(2 * MiB, 3 * MiB)));
  assert.throws(() => tree.root(), /piece at offset 1048576 is missing/);
  const t2 = new DigestTree([{ offset: 0, length: MiB }]);
  t2.add(0, MiB, await pieceDigests(0, disk.subarray(0, MiB)));
  t2.add(3 * MiB, 4096, await pieceDigests(3 * MiB, disk.subarray(3 * MiB, 3 * MiB + 4096)));
  assert.throws(() => t2.root(), /outside the ranges/);
  assert.throws(() => new DigestTree([{ offset: 0, length: MiB }]).add(0, 4096, Buffer.alloc(32)), /has 4096 bytes, the ranges say 1048576/);
});
