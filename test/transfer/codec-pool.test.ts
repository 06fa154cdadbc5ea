/**
 * Packing on the calling thread (small extents) and in codec workers (large ones) give the same
 * results, and whatever one packs the receiver's unpack restores bit for bit.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { CodecPool, INLINE_PACK_MAX } from '../../src/transfer/codec-pool.ts';
import { CODEC } from '../../src/transfer/protocol.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';

const pool = new CodecPool(2);
after(() => pool.close());

const text = (n: number): Buffer => Buffer.from('the quick brown fox jumps over the lazy dog, 0123456789 '.repeat(Math.ceil(n / 56))).subarray(0, n);

test('small and large extents: zeros as markers, text compressed, random raw; every digest right; unpack restores them', async () => {
  for (const size of [512, 4096, INLINE_PACK_MAX, INLINE_PACK_MAX + 4096, 1 << 20]) {
    for (const [kind, data, codec] of [['zeros', Buffer.alloc(size), CODEC.ZERO], ['text', text(size), CODEC.ZSTD], ['random', randomBytes(size), CODEC.RAW]] as const) {
      const p = await pool.pack(data, 7);
      assert.equal(p.codec, codec, `${kind} ${size}`);
      if (codec === CODEC.ZERO) continue;
      assert.ok(p.digest.equals(treeDigest(data)), `digest of ${kind} ${size}`);
      if (codec === CODEC.ZSTD) assert.ok(p.payload!.length < size / 4, `${kind} ${size} shrinks`);
      const back = await pool.unpack(p.codec, Buffer.from(p.payload!), size, p.digest);
      assert.ok(back.equals(data), `${kind} ${size} round trip`);
    }
  }
});

test('a small extent with a wrong length or digest is refused on unpack, as a large one is', async () => {
  const data = text(4096);
  const p = await pool.pack(data, 7);
  await assert.rejects(pool.unpack(p.codec, Buffer.from(p.payload!), 4097, p.digest), (e: { code?: string }) => e.code === 'BAD_LENGTH');
  const wrong = Buffer.from(p.digest); wrong[0]! ^= 1;
  await assert.rejects(pool.unpack(p.codec, Buffer.from(p.payload!), 4096, wrong), (e: { code?: string }) => e.code === 'BAD_DIGEST');
});

test('a compressed extent decompresses into the buffer the caller gives, bit for bit; a bad one given a buffer is still refused', async () => {
  const MiB = 1 << 20;
  const data = Buffer.concat([text(MiB / 2), randomBytes(MiB / 2)]);
  const p = await pool.pack(data, 7);
  assert.equal(p.codec, CODEC.ZSTD);
  const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
  // a pooled buffer is larger than the extent (a raw frame's): the result is a view of its start
  const into = Buffer.from(new ArrayBuffer(MiB + 64), 0, MiB);
  const back = await pool.unpack(p.codec, Buffer.from(p.payload!), MiB, p.digest, false, into);
  assert.equal(sha(back), sha(data));
  assert.equal(back.byteLength, MiB);
  assert.equal(back.buffer.byteLength, MiB + 64, 'the caller\'s buffer came back, not a fresh one');
  const wrong = Buffer.from(p.digest); wrong[5]! ^= 1;
  await assert.rejects(pool.unpack(p.codec, Buffer.from(p.payload!), MiB, wrong, false, Buffer.allocUnsafeSlow(MiB)), (e: { code?: string }) => e.code === 'BAD_DIGEST');
  await assert.rejects(pool.unpack(p.codec, Buffer.from(p.payload!), MiB - 1, p.digest, false, Buffer.allocUnsafeSlow(MiB)), (e: { code?: string }) => e.code === 'BAD_LENGTH');
});
