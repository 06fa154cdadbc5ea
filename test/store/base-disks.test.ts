import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openImageStore, StoreError } from '../../src/store/index.ts';
import { randomDisk, sha, tempDir, writeAll } from './helpers.ts';

const CS = 64 << 10;

test('baseDisks: each disk of a cycle starts from the base disk it names, or empty', async (t) => {
  const dir = await tempDir(t, 'base-disks');
  const store = await openImageStore(join(dir, 'store'), { chunkSize: CS });
  t.after(() => store.close());
  const cap = [1 << 20, 2 << 20, 3 << 20];
  const data = cap.map((c) => randomDisk(c));
  const w1 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: cap.map((capacity, disk) => ({ disk, capacity })) });
  for (const [i, d] of data.entries()) await writeAll(w1, i, d, 128 << 10);
  await w1.commit();

  // Disk 1 went away; the next image has the old disk 2 (moved to 1, kept base) and a new empty disk 2.
  const w2 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c2', baseImageId: '1', baseDisks: [0, 2, null],
    disks: [{ disk: 0, capacity: cap[0]! }, { disk: 1, capacity: cap[2]! }, { disk: 2, capacity: 1 << 20 }] });
  const img2 = await w2.commit();
  assert.equal(img2.baseImageId, '1');
  assert.equal(sha(await store.readImage('vm', '2', 0, 0, cap[0]!)), sha(data[0]!));
  assert.equal(sha(await store.readImage('vm', '2', 1, 0, cap[2]!)), sha(data[2]!), 'the moved disk kept its own base');
  assert.ok((await store.readImage('vm', '2', 2, 0, 1 << 20)).every((x) => x === 0), 'the new disk starts empty');

  // Without baseDisks: by number, as before.
  const w3 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c3', disks: [{ disk: 0, capacity: cap[0]! }, { disk: 1, capacity: cap[2]! }] });
  await w3.commit();
  assert.equal(sha(await store.readImage('vm', '3', 1, 0, cap[2]!)), sha(data[2]!));

  await assert.rejects(store.beginCycle({ sourceId: 'vm', cycleId: 'c4', baseImageId: '3', baseDisks: [0, 5], disks: [{ disk: 0, capacity: CS }, { disk: 1, capacity: CS }] }),
    (e: unknown) => e instanceof StoreError && e.code === 'BAD_DISK' && /cannot start from disk 5 of image 3/.test(e.message));
  await assert.rejects(store.beginCycle({ sourceId: 'vm', cycleId: 'c4', baseImageId: '3', baseDisks: [0], disks: [{ disk: 0, capacity: CS }, { disk: 1, capacity: CS }] }),
    (e: unknown) => e instanceof StoreError && e.code === 'BAD_DISK' && /2 entries/.test(e.message));
  assert.deepEqual(await store.openCycles('vm'), [], 'a refused begin leaves no cycle');
});

test('baseDisks: a resume must name the mapping the cycle was begun with', async (t) => {
  const dir = await tempDir(t, 'base-disks-resume');
  const root = join(dir, 'store');
  let store = await openImageStore(root, { chunkSize: CS });
  const disks = [{ disk: 0, capacity: CS }, { disk: 1, capacity: CS }];
  const w1 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks });
  await writeAll(w1, 0, randomDisk(CS), CS); await writeAll(w1, 1, randomDisk(CS), CS);
  await w1.commit();
  await store.beginCycle({ sourceId: 'vm', cycleId: 'c2', baseImageId: '1', baseDisks: [1, 0], disks });
  await store.close();
  store = await openImageStore(root, { chunkSize: CS });
  t.after(() => store.close());
  await assert.rejects(store.beginCycle({ sourceId: 'vm', cycleId: 'c2', baseImageId: '1', baseDisks: [0, 1], disks }),
    (e: unknown) => e instanceof StoreError && e.code === 'CYCLE_MISMATCH' && /base disks \[1,0\]/.test(e.message));
  const w2 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c2', baseImageId: '1', baseDisks: [1, 0], disks });
  await w2.commit();
  assert.equal(sha(await store.readImage('vm', '2', 0, 0, CS)), sha(await store.readImage('vm', '1', 1, 0, CS)), 'swapped disks keep their own bases');
  assert.equal(sha(await store.readImage('vm', '2', 1, 0, CS)), sha(await store.readImage('vm', '1', 0, 0, CS)));
});
