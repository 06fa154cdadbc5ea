/**
 * A compressed extent is decoded into exactly the bytes its header declares (at most 4 MiB), whatever
 * its zstd frames claim: a payload of 32 KiB that inflates to 1 GiB (a first frame with the right
 * content size, then a frame of RLE blocks without one) is refused without inflating it. Before the
 * fix the codec worker decoded the whole GiB (12 s, 2.2 GB peak RSS) before refusing it.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { compress } from 'zstd-napi';
import { CodecPool } from '../../src/transfer/codec-pool.ts';
import { CODEC } from '../../src/transfer/protocol.ts';
import { patchedSizeFrame, rleFrame } from '../receiver/fuzz/zstd-bombs.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';

const pool = new CodecPool(1);
after(() => pool.close());
const MiB = 1 << 20;
const GiB = 1 << 30;
const hwmKiB = () => Number(/VmHWM:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]);
const sha = (b: Buffer) => treeDigest(b);

test('zstd bombs are refused without inflating them; a good frame still decodes', async () => {
  const good = Buffer.alloc(MiB, 7);
  // warm the worker up so its own start does not count as growth
  assert.ok((await pool.unpack(CODEC.ZSTD, Buffer.from(compress(good)), MiB, sha(good))).equals(good));
  const before = hwmKiB();
  const cases: [string, Buffer][] = [
    ['a right first frame, then 1 GiB of RLE blocks with no content size', Buffer.concat([compress(good), rleFrame(GiB)])],
    ['a right first frame, then a frame claiming and holding 1 GiB', Buffer.concat([compress(good), rleFrame(GiB, { claim: GiB })])],
    ['one frame of 1 GiB with no content size', rleFrame(GiB)],
    ['one frame claiming 1 MiB holding 1 GiB', rleFrame(GiB, { claim: MiB })],
    ['a real frame whose header claims 4 GiB', patchedSizeFrame(good, 4 * GiB)],
    ['a 1 MiB frame with trailing garbage', Buffer.concat([compress(good), Buffer.from('garbage')])],
  ];
  for (const [what, payload] of cases) {
    const t0 = performance.now();
    await assert.rejects(pool.unpack(CODEC.ZSTD, payload, MiB, sha(good)), (e: { code?: string; message?: string }) => {
      assert.ok(e.code === 'BAD_LENGTH' || e.code === 'BAD_FRAME', `${what}: ${e.code} ${e.message}`);
      return true;
    }, what);
    assert.ok(performance.now() - t0 < 2000, `${what}: refused in ${Math.round(performance.now() - t0)} ms`);
  }
  const grew = hwmKiB() - before;
  assert.ok(grew < 64 * 1024, `peak RSS grew by ${grew} KiB (bound 64 MiB)`);
  // an RLE frame that is exactly what it says is an ordinary extent
  const rle = Buffer.alloc(MiB, 0x41);
  assert.ok((await pool.unpack(CODEC.ZSTD, rleFrame(MiB, { claim: MiB }), MiB, sha(rle))).equals(rle));
});
