/**
 * writeExtent with `check`: the digest is the sender's claim, checked by the store as it stores the
 * bytes (a whole chunk: digest and pack append in one native call). A wrong claim stores and holds
 * nothing, and never makes the cycle reuse content it was not sent.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImageStore } from '../../src/store/index.ts';
import { StoreError } from '../../src/store/types.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';
import { nativeDigest } from '../../src/util/native-digest.ts';
import { chunkFiles, packFiles, sha, storeWithImage, tempDir } from './helpers.ts';

const MiB = 1 << 20;
/** The names the cycle's refs.log holds (gc marks from them). */
const refs = async (root: string, source: string, cycle: string): Promise<Set<string>> =>
  new Set((await readFile(join(root, 'sources', source, 'cycles', cycle, 'refs.log'), 'utf8')).split('\n').filter(Boolean));
const refused = (e: unknown): boolean => e instanceof StoreError && e.code === 'BAD_DIGEST' && /extent digest mismatch/.test(e.message);

test('the native library is built (the one-call path is what these tests exercise)', () => {
  assert.ok(nativeDigest(), 'native/build/libvmlift-digest.so: run bash native/build.sh');
});

test('checked whole chunks with true claims are stored bit-identical, named by their claims', async (t) => {
  const root = join(await tempDir(t, 'checked'), 'store');
  const store = await openImageStore(root, { chunkSize: MiB });
  const cap = 3 * MiB + 12288; // the last chunk is short
  const disk = randomBytes(cap);
  disk.fill(0, MiB, 2 * MiB); // an all-zero chunk, claimed as such: a hole
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  await Promise.all([0, 1, 2, 3].map((i) => {
    const part = disk.subarray(i * MiB, Math.min(cap, (i + 1) * MiB));
    return w.writeExtent(0, i * MiB, part.length, part, { sha256: treeDigest(part), check: true });
  }));
  const noted = await refs(root, 'vm', 'c1');
  for (const i of [0, 2, 3]) assert.ok(noted.has(treeDigest(disk.subarray(i * MiB, Math.min(cap, (i + 1) * MiB))).toString('hex')), `chunk ${i} is in refs.log before the commit`);
  const img = await w.commit({ expected: [{ disk: 0, ranges: [{ offset: 0, length: cap }] }] });
  assert.equal(sha(await store.readImage('vm', img.imageId, 0, 0, cap)), sha(disk));
  const names = await chunkFiles(root);
  assert.equal(names.size, 3, 'three chunks stored, the zero one is a hole');
  for (const i of [0, 2, 3]) assert.ok(names.has(treeDigest(disk.subarray(i * MiB, Math.min(cap, (i + 1) * MiB))).toString('hex')));
  assert.equal((await store.verify('vm', img.imageId)).ok, true);
});

test('a checked whole chunk with a wrong claim is refused (BAD_DIGEST): nothing stored, nothing held, the cycle goes on', async (t) => {
  const root = join(await tempDir(t, 'checked-bad'), 'store');
  const store = await openImageStore(root, { chunkSize: MiB });
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: 2 * MiB }] });
  const good = randomBytes(MiB);
  const bad = randomBytes(MiB);
  await assert.rejects(w.writeExtent(0, 0, MiB, bad, { sha256: treeDigest(good), check: true }), refused);
  // zeros claimed for bytes that are not
  await assert.rejects(w.writeExtent(0, MiB, MiB, bad, { sha256: treeDigest(Buffer.alloc(MiB)), check: true }), refused);
  await w.flush();
  assert.deepEqual((await w.held())[0]!.ranges, []);
  assert.equal((await chunkFiles(root)).size, 0, 'no pack names the refused bytes');
  assert.ok(!(await refs(root, 'vm', 'c1')).has(treeDigest(good).toString('hex')), 'a refused claim is not journaled');
  // the same slot written right afterwards is stored as sent
  await w.writeExtent(0, 0, MiB, good, { sha256: treeDigest(good), check: true });
  await w.writeExtent(0, MiB, MiB, bad, { sha256: treeDigest(bad), check: true });
  const img = await w.commit({ expected: [{ disk: 0, ranges: [{ offset: 0, length: 2 * MiB }] }] });
  assert.equal(sha(await store.readImage('vm', img.imageId, 0, 0, 2 * MiB)), sha(Buffer.concat([good, bad])));
  assert.equal((await chunkFiles(root)).size, 2);
  assert.ok((await packFiles(root)).every((n) => !n.endsWith('.tmp')));
});

test('a claim naming a chunk the store already holds, sent with other bytes, is refused: the cycle never reuses content it was not sent', async (t) => {
  const { store, v1 } = await storeWithImage(t, { chunkSize: MiB, capacity: 2 * MiB, name: 'checked-dedup' });
  const w = await store.beginCycle({ sourceId: 'other', cycleId: 'c1', disks: [{ disk: 0, capacity: 2 * MiB }], baseImageId: null });
  const theirs = v1.subarray(0, MiB);
  const mine = randomBytes(MiB);
  await assert.rejects(w.writeExtent(0, 0, MiB, mine, { sha256: treeDigest(theirs), check: true }), refused);
  // the same claim again within the cycle (its writer now knows the name): refused as well
  await assert.rejects(w.writeExtent(0, MiB, MiB, mine, { sha256: treeDigest(theirs), check: true }), refused);
  // a true claim of content the store holds is reused as before
  await w.writeExtent(0, MiB, MiB, theirs, { sha256: treeDigest(theirs), check: true });
  await w.flush();
  assert.deepEqual((await w.held())[0]!.ranges, [{ offset: MiB, length: MiB }]);
  await w.abort();
});

test('checked extents that are not one whole chunk are checked whole before any of their chunks is stored', async (t) => {
  const root = join(await tempDir(t, 'checked-parts'), 'store');
  const store = await openImageStore(root, { chunkSize: MiB });
  const cap = 4 * MiB;
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  const two = randomBytes(2 * MiB); // two whole chunks in one extent
  const part = randomBytes(300 * 1024); // part of a chunk, not sub-chunk aligned
  await assert.rejects(w.writeExtent(0, 0, two.length, two, { sha256: treeDigest(randomBytes(32)), check: true }), refused);
  await assert.rejects(w.writeExtent(0, 2 * MiB + 4096, part.length, part, { sha256: treeDigest(two), check: true }), refused);
  await assert.rejects(w.writeExtent(0, 0, two.length, two, { sha256: 'not a digest', check: true }), (e: unknown) => e instanceof StoreError && e.code === 'BAD_DIGEST');
  await w.flush();
  assert.deepEqual((await w.held())[0]!.ranges, []);
  assert.equal((await chunkFiles(root)).size, 0);
  await w.writeExtent(0, 0, two.length, two, { sha256: treeDigest(two), check: true });
  await w.writeExtent(0, 2 * MiB + 4096, part.length, part, { sha256: treeDigest(part), check: true });
  const img = await w.commit();
  const want = Buffer.alloc(cap);
  two.copy(want, 0);
  part.copy(want, 2 * MiB + 4096);
  assert.equal(sha(await store.readImage('vm', img.imageId, 0, 0, cap)), sha(want));
});

test('a refused whole chunk over sub-chunks patched in the cache leaves them as they were', async (t) => {
  const root = join(await tempDir(t, 'checked-cache'), 'store');
  const store = await openImageStore(root, { chunkSize: MiB });
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: MiB }] });
  const small = randomBytes(4096);
  await w.writeExtent(0, 8192, small.length, small);
  const bad = randomBytes(MiB);
  await assert.rejects(w.writeExtent(0, 0, MiB, bad, { sha256: treeDigest(randomBytes(MiB)), check: true }), refused);
  const img = await w.commit({ expected: [{ disk: 0, ranges: [{ offset: 8192, length: 4096 }] }] });
  const want = Buffer.alloc(MiB);
  small.copy(want, 8192);
  assert.equal(sha(await store.readImage('vm', img.imageId, 0, 0, MiB)), sha(want));
});

test('wholeChunk names the extents a checked write checks as it appends them: whole chunks, the short last one, nothing else', async (t) => {
  const root = join(await tempDir(t, 'whole'), 'store');
  const store = await openImageStore(root, { chunkSize: MiB });
  const cap = 2 * MiB + 12288;
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  assert.equal(w.wholeChunk(0, 0, MiB), true);
  assert.equal(w.wholeChunk(0, MiB, MiB), true);
  assert.equal(w.wholeChunk(0, 2 * MiB, 12288), true, 'the short last chunk');
  assert.equal(w.wholeChunk(0, 2 * MiB, 8192), false, 'part of the last chunk');
  assert.equal(w.wholeChunk(0, 4096, MiB), false, 'not on a chunk boundary');
  assert.equal(w.wholeChunk(0, 0, MiB / 2), false, 'part of a chunk');
  assert.equal(w.wholeChunk(0, 0, 2 * MiB), false, 'two chunks');
  assert.equal(w.wholeChunk(1, 0, MiB), false, 'no such disk');
  await w.abort();
});

test('whole chunks checked before the store (a codec worker\'s decompressed bytes) are journaled in refs.log as they are appended, and read back bit-identical', async (t) => {
  const root = join(await tempDir(t, 'prechecked'), 'store');
  const store = await openImageStore(root, { chunkSize: MiB });
  const cap = 4 * MiB;
  const disk = randomBytes(cap);
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  const digests = [0, 1, 2, 3].map((i) => treeDigest(disk.subarray(i * MiB, (i + 1) * MiB)));
  await Promise.all(digests.map((d, i) => w.writeExtent(0, i * MiB, MiB, disk.subarray(i * MiB, (i + 1) * MiB), { sha256: d })));
  const noted = await refs(root, 'vm', 'c1');
  for (const [i, d] of digests.entries()) assert.ok(noted.has(d.toString('hex')), `chunk ${i} is in refs.log before the flush (gc marks from it)`);
  const img = await w.commit({ expected: [{ disk: 0, ranges: [{ offset: 0, length: cap }] }] });
  assert.equal(sha(await store.readImage('vm', img.imageId, 0, 0, cap)), sha(disk));
  assert.equal((await store.verify('vm', img.imageId)).ok, true);
});
