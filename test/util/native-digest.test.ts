/**
 * The native digester (native/digest/ through koffi) gives the same block digests, zero flags and
 * wire digests as Node's crypto, and the codec pool's native paths check and refuse like the worker's.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { nativeDigest } from '../../src/util/native-digest.ts';
import { treeDigest, treeDigestHere } from '../../src/util/tree-digest.ts';
import { DigestPool } from '../../src/agent/digest-pool.ts';
import { CodecPool } from '../../src/transfer/codec-pool.ts';
import { CODEC, ProtocolError } from '../../src/transfer/protocol.ts';

const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

/** 1 MiB + 1000 bytes: random blocks, an all-zero block, a block zero but for its last byte, a short tail. */
function sample(): Buffer {
  const b = randomBytes(1024 * 1024 + 1000);
  b.fill(0, 8192, 12288);
  b.fill(0, 16384, 20480); b[20479] = 1;
  return b;
}

test('setup built the native digester (npm test runs native/build.sh)', () => {
  assert.ok(nativeDigest(), 'native/build/libvmlift-digest.so is missing or does not load');
});

test('native block digests and zero flags equal the worker threads\' (Node crypto)', async () => {
  const data = sample();
  const native = new DigestPool(2, true);
  const workers = new DigestPool(2, false);
  try {
    const a = await native.digest(data, 4096);
    const b = await workers.digest(data, 4096);
    assert.equal(a.digests.length, Math.ceil(data.length / 4096) * 32);
    assert.ok(a.digests.equals(b.digests));
    assert.deepEqual([...a.zero], [...b.zero]);
    assert.equal(a.zero[2], 1);
    assert.equal(a.zero[4], 0);
    assert.ok(a.digests.subarray(32, 64).equals(sha(data.subarray(4096, 8192))));
    const tail = Math.floor(data.length / 4096);
    assert.ok(a.digests.subarray(tail * 32).equals(sha(data.subarray(tail * 4096))));
    assert.ok(a.whole?.equals(treeDigest(data)), 'the whole buffer\'s tree digest (the wire digest), from the block digests');
    assert.ok(b.whole?.equals(treeDigest(data)), 'the same from the worker threads');
    assert.ok((await nativeDigest()!.tree(data)).equals(treeDigest(data)), 'the native tree digest of a buffer');
  } finally {
    await native.close();
    await workers.close();
  }
});

test('codec pool: native level-0 pack and RAW unpack agree with the workers and refuse a bad digest', async () => {
  const native = new CodecPool(1, true);
  const workers = new CodecPool(1, false);
  try {
    const data = randomBytes(1024 * 1024);
    const a = await native.pack(data, null);
    const b = await workers.pack(data, null);
    assert.equal(a.codec, CODEC.RAW);
    assert.equal(b.codec, CODEC.RAW);
    assert.ok(a.digest.equals(b.digest));
    assert.ok(a.digest.equals(treeDigest(data)));
    assert.ok(a.payload!.equals(data));
    assert.equal((await native.pack(Buffer.alloc(65536), null)).codec, CODEC.ZERO);

    const out = await native.unpack(CODEC.RAW, Buffer.from(data), data.length, treeDigest(data));
    assert.ok(out.equals(data));
    const bad = Buffer.from(data); bad[12345] ^= 1;
    await assert.rejects(native.unpack(CODEC.RAW, bad, bad.length, treeDigest(data)), (e: unknown) => e instanceof ProtocolError && e.code === 'BAD_DIGEST');
    await assert.rejects(workers.unpack(CODEC.RAW, Buffer.from(bad), bad.length, treeDigest(data)), (e: unknown) => e instanceof ProtocolError && e.code === 'BAD_DIGEST');
    // the plain SHA-256 (wire version 1's digest) is refused too
    await assert.rejects(native.unpack(CODEC.RAW, Buffer.from(data), data.length, sha(data)), (e: unknown) => e instanceof ProtocolError && e.code === 'BAD_DIGEST');
  } finally {
    await native.close();
    await workers.close();
  }
});

test('storeChecked: writes the refs line, the header and the bytes only when the tree digest matches; a failed write rejects with its errno code', async (t) => {
  const { mkdtemp, open, readFile, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-test-store-checked-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const native = nativeDigest()!;
  const data = sample();
  const head = Buffer.from('HEAD');
  const pack = await open(join(dir, 'pack'), 'w+');
  const refs = await open(join(dir, 'refs'), 'a');
  try {
    const wrong = await native.storeChecked(data, sha(data), refs.fd, Buffer.from('bad\n'), pack.fd, 8, head);
    assert.deepEqual(wrong, treeDigest(data), 'a wrong claim answers the computed digest');
    assert.equal((await pack.stat()).size, 0, 'and writes nothing');
    assert.equal(await native.storeChecked(data, treeDigest(data), refs.fd, Buffer.from('good\n'), pack.fd, 8, head), null);
    const back = await readFile(join(dir, 'pack'));
    assert.equal(back.length, 8 + head.length + data.length);
    assert.deepEqual(back.subarray(8, 12), head);
    assert.equal(sha(back.subarray(12)).toString('hex'), sha(data).toString('hex'));
    assert.equal(await readFile(join(dir, 'refs'), 'utf8'), 'good\n');
  } finally {
    await pack.close();
    await refs.close();
  }
  const ro = await open(join(dir, 'pack'), 'r');
  try {
    await assert.rejects(native.storeChecked(data, treeDigest(data), -1, null, ro.fd, 0, head), (e: NodeJS.ErrnoException) => e.code === 'EBADF');
  } finally {
    await ro.close();
  }
});

test('tree digests on this thread (native, one call) equal the JavaScript ones, also of a view into a larger buffer', () => {
  const native = nativeDigest();
  assert.ok(native);
  const big = sample();
  for (const len of [0, 1, 4095, 4096, 4097, 65536, 65536 + 100, 256 * 1024]) {
    for (const at of [0, 3, 8192]) {
      const view = big.subarray(at, at + len);
      assert.ok(native.treeHere(view).equals(treeDigest(view)), `length ${len} at ${at}`);
      assert.ok(treeDigestHere(view).equals(treeDigest(view)), `treeDigestHere, length ${len} at ${at}`);
    }
  }
  // a changed byte changes the digest (the call reads the view, not a stale or shifted copy)
  const a = Buffer.from(big.subarray(0, 65536));
  const before = native.treeHere(a);
  a[65535] ^= 1;
  assert.ok(!native.treeHere(a).equals(before));
  assert.ok(native.treeHere(a).equals(treeDigest(a)));
});
