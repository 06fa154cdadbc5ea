import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { openImageStore } from '../../src/store/index.ts';
import { treeDigest as chunkName } from '../../src/util/tree-digest.ts';
import { publishImage } from '../../src/store/publish.ts';
import { bareCycle, bareStore } from './cycle-parts.ts';
import { sha } from './helpers.ts';

const MiB = 1 << 20;
const SUB = MiB / 16;

test('overlapping writes issued at once land in call order: whole chunks, whole sub-chunks, cached partial ones and zeros', async (t) => {
  const { root, layout } = await bareStore(t, MiB);
  const cap = 4 * MiB + 3 * 4096;
  const c = await bareCycle(t, { layout, chunkSize: MiB, disks: [{ disk: 0, capacity: cap }] });
  const model = Buffer.alloc(cap);
  let seed = 11;
  const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
  const writes: Promise<void>[] = [];
  for (let k = 0; k < 300; k++) {
    const kind = rnd(4);
    const len = kind === 0 ? MiB : kind === 1 ? SUB : 1 + rnd(3 * 4096);
    const off = kind === 0 ? rnd(4) * MiB : kind === 1 ? rnd(64) * SUB : rnd(cap - len);
    const data = rnd(5) === 0 ? null : randomBytes(len);
    if (data) data.copy(model, off); else model.fill(0, off, off + len);
    writes.push(c.write(0, off, data, len)); // not awaited: all in flight together
  }
  await Promise.all(writes);
  await c.flush();
  const img = await publishImage(layout, c.rec, c.dir, [c.disk(0)], {});
  const store = await openImageStore(root);
  assert.equal(sha(await store.readImage('vm', img.imageId, 0, 0, cap)), sha(model));
});

test('a whole chunk is named in the index; a partial write stores the sub-chunks it touches, a run of small ones into one sub-chunk once', async (t) => {
  const { layout } = await bareStore(t, MiB);
  const c = await bareCycle(t, { layout, chunkSize: MiB, disks: [{ disk: 0, capacity: 2 * MiB }] });
  const whole = randomBytes(MiB);
  await c.write(0, 0, whole);
  assert.deepEqual(await c.disk().index.get(0), chunkName(whole));
  assert.equal(c.chunks.newChunks, 1);
  const sub = Buffer.alloc(SUB);
  for (let k = 0; k < 15; k++) { // 60 KiB of sub-chunk 0 of slot 1, 4 KiB at a time
    const part = randomBytes(4096);
    part.copy(sub, k * 4096);
    await c.write(0, MiB + k * 4096, part);
  }
  assert.equal(c.chunks.newChunks, 1, 'the partial sub-chunk is still only in the cache');
  assert.equal(c.disk().overlay.overlay.size, 0);
  await c.flush();
  assert.equal(c.chunks.newChunks, 2, 'stored once, at the flush');
  assert.deepEqual([...c.disk().overlay.overlay.get(1)!], [[0, chunkName(sub)]]);
  assert.equal(await c.disk().index.get(1), null, 'slot 1 still has no whole chunk');
  assert.deepEqual(c.journals.held()[0]!.ranges, [{ offset: 0, length: MiB + 15 * 4096 }]);
  // a whole chunk over slot 1 makes its sub-chunks moot
  await c.write(0, MiB, whole);
  assert.equal(c.disk().overlay.overlay.has(1), false);
  assert.deepEqual(await c.disk().index.get(1), chunkName(whole));
});

test('the cache keeps to its bound: the least recently used partial sub-chunks are stored when evicted, the rest at the flush', async (t) => {
  const { layout } = await bareStore(t, MiB);
  const c = await bareCycle(t, { layout, chunkSize: MiB, disks: [{ disk: 0, capacity: 2 * MiB }], cacheBytes: 2 * SUB });
  for (const k of [0, 1, 2, 3]) await c.write(0, k * SUB + 100, randomBytes(1000));
  await c.extents.settled();
  assert.equal(c.chunks.newChunks, 2);
  assert.deepEqual([...c.disk().overlay.overlay.get(0)!.keys()], [0, 1], 'the two oldest went first');
  await c.flush();
  assert.equal(c.chunks.newChunks, 4);
  assert.deepEqual([...c.disk().overlay.overlay.get(0)!.keys()].sort(), [0, 1, 2, 3]);
});

test('a sub-chunk evicted from the write-back cache keeps its patch when a write to it was already queued behind another write to its chunk', async (t) => {
  const { root, layout } = await bareStore(t, MiB);
  const cap = 2 * MiB;
  // room for one cached sub-chunk: every partial write into another one evicts the last
  const c = await bareCycle(t, { layout, chunkSize: MiB, disks: [{ disk: 0, capacity: cap }], cacheBytes: SUB });
  const model = Buffer.alloc(cap);
  const w = (off: number, data: Buffer | null, len = data!.length) => {
    if (data) data.copy(model, off); else model.fill(0, off, off + len);
    return c.write(0, off, data, len);
  };
  await w(100, randomBytes(10)); // slot 0, sub 0: cached
  // the write into sub 1 evicts sub 0 once it is done; the second write into sub 0 is queued before that eviction's store
  await Promise.all([w(SUB + 100, randomBytes(10)), w(200, randomBytes(10))]);
  await w(2 * SUB + 5, randomBytes(10)); // sub 2 evicts sub 0 again
  // evicted, and replaced whole (and then in part) before its store runs
  await Promise.all([w(3 * SUB + 1, randomBytes(10)), w(2 * SUB, randomBytes(SUB)), w(2 * SUB + 7, null, 3)]);
  // slot 1: a cached sub-chunk evicted and then its whole chunk written, both queued at once
  await w(MiB + 50, randomBytes(10));
  await Promise.all([w(MiB + SUB + 9, randomBytes(10)), w(MiB, randomBytes(MiB))]);
  await c.flush();
  const img = await publishImage(layout, c.rec, c.dir, [c.disk(0)], {});
  const store = await openImageStore(root);
  assert.equal(sha(await store.readImage('vm', img.imageId, 0, 0, cap)), sha(model));
});

test('with a write-back cache of a few sub-chunks, batches of overlapping writes in flight together and flushes between them read back as written', async (t) => {
  for (const subs of [1, 3]) {
    const { root, layout } = await bareStore(t, MiB);
    const cap = 3 * MiB + 4096;
    const c = await bareCycle(t, { layout, chunkSize: MiB, disks: [{ disk: 0, capacity: cap }], cacheBytes: subs * SUB, cycleId: `c${subs}` });
    const model = Buffer.alloc(cap);
    let seed = 7919 * subs;
    const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
    for (let batch = 0; batch < 20; batch++) {
      const writes: Promise<void>[] = [];
      for (let k = 0; k < 20; k++) {
        const kind = rnd(6);
        const len = kind === 0 ? MiB : kind === 1 ? SUB : 1 + rnd(2 * 4096);
        const off = kind === 0 ? rnd(3) * MiB : kind === 1 ? rnd(48) * SUB : rnd(cap - len);
        const data = rnd(6) === 0 ? null : randomBytes(len);
        if (data) data.copy(model, off); else model.fill(0, off, off + len);
        writes.push(c.write(0, off, data, len));
      }
      await Promise.all(writes);
      if (rnd(4) === 0) await c.flush();
    }
    await c.flush();
    const img = await publishImage(layout, c.rec, c.dir, [c.disk(0)], {});
    const store = await openImageStore(root);
    assert.equal(sha(await store.readImage('vm', img.imageId, 0, 0, cap)), sha(model), `cache of ${subs} sub-chunks`);
  }
});
