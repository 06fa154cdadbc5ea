import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { StoreError } from '../../src/store/index.ts';
import type { StagedImage } from '../../src/store/index.ts';
import { scatter, sha, storeWithImage } from './helpers.ts';

const MiB = 1 << 20;

async function stagedBytes(s: StagedImage, disk: number, capacity: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let o = 0; o < capacity; o += 3 * MiB + 4096) parts.push(await s.read(disk, o, Math.min(3 * MiB + 4096, capacity - o)));
  return Buffer.concat(parts);
}

test('commit verify sees the staged image (base, whole chunks, sub-chunk overlays, zeros) before anything is published', async (t) => {
  const cs = 256 << 10;
  const cap = 8 * MiB + 8192; // not a multiple of the chunk size
  const { store, v1 } = await storeWithImage(t, { chunkSize: cs, capacity: cap, name: 'staged' });
  const v2 = Buffer.from(v1);
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
  for (const o of scatter(v2, 40)) await w.writeExtent(0, o, 4096, v2.subarray(o, o + 4096)); // sub-chunks
  randomBytes(cs).copy(v2, 2 * cs);
  await w.writeExtent(0, 2 * cs, cs, v2.subarray(2 * cs, 3 * cs)); // a whole chunk
  v2.fill(0, 5 * MiB + 1000, 6 * MiB);
  await w.writeExtent(0, 5 * MiB + 1000, MiB - 1000, null); // zeros across chunks
  let seen: string | undefined;
  let imagesDuring: string[] = [];
  const img = await w.commit({
    verify: async (staged) => {
      assert.deepEqual(staged.disks.map((d) => d.capacity), [cap]);
      seen = sha(await stagedBytes(staged, 0, cap));
      imagesDuring = (await store.listImages('vm')).map((i) => i.imageId);
      await assert.rejects(staged.read(0, cap - 10, 11), (e: unknown) => e instanceof StoreError && e.code === 'OUT_OF_RANGE');
    },
  });
  assert.equal(seen, sha(v2), 'the staged bytes are the image to be');
  assert.deepEqual(imagesDuring, ['1'], 'nothing published while verify runs');
  assert.equal(sha(await store.readImage('vm', img.imageId, 0, 0, cap)), sha(v2));
});

test('a refusing verify publishes nothing and leaves the cycle open as it was: commit again or abort', async (t) => {
  const cs = 64 << 10;
  const cap = 2 * MiB;
  const { store, v1 } = await storeWithImage(t, { chunkSize: cs, capacity: cap, name: 'refuse' });
  const v2 = Buffer.from(v1);
  randomBytes(100_000).copy(v2, 300_000);
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
  await w.writeExtent(0, 300_000, 100_000, v2.subarray(300_000, 400_000));
  const held = [{ disk: 0, ranges: [{ offset: 300_000, length: 100_000 }] }];
  const refusal = new StoreError('TEST_MISMATCH', 'the staged bytes differ');
  await assert.rejects(w.commit({ expected: held, verify: async () => { throw refusal; } }), (e: unknown) => e === refusal);
  assert.deepEqual((await store.listImages('vm')).map((i) => i.imageId), ['1']);
  assert.deepEqual(await store.openCycles('vm'), ['c2']);
  assert.deepEqual(await w.held(), held);
  // the same writer commits once verify accepts
  const img = await w.commit({ expected: held, verify: async (s) => { assert.equal(sha(await s.read(0, 0, cap)), sha(v2)); } });
  assert.equal(img.imageId, '2');
  assert.equal(sha(await store.readImage('vm', '2', 0, 0, cap)), sha(v2));
  assert.deepEqual(await store.openCycles('vm'), []);
  // and a refused cycle can be aborted instead
  const w3 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c3', disks: [{ disk: 0, capacity: cap }] });
  await w3.writeExtent(0, 0, 4096, randomBytes(4096));
  await assert.rejects(w3.commit({ verify: async () => { throw refusal; } }));
  await w3.abort();
  assert.deepEqual(await store.openCycles('vm'), []);
  assert.deepEqual((await store.listImages('vm')).map((i) => i.imageId), ['1', '2']);
});
