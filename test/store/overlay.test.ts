/**
 * Sub-chunk overlays (src/store/overlay.ts): a partial write stores only the sub-chunks it touches,
 * and every reader (read, export, verify, chunk digests, gc) sees the slot's bytes as written.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImageStore } from '../../src/store/index.ts';
import { agePacks, chunkFiles, chunkLocation, corruptChunk, sha, tempDir, writeAll } from './helpers.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';

/** A chunk's name: its tree digest, hex. */
const chunkName = (b: Uint8Array): string => treeDigest(b).toString('hex');

const MiB = 1 << 20;
const SUB = 64 << 10;

/** A store (1 MiB chunks) with image 1 of source "vm": `cap` random bytes written as whole chunks. */
async function storeWithImage(t: Parameters<typeof tempDir>[0], name: string, cap: number) {
  const dir = await tempDir(t, name);
  const root = join(dir, 'store');
  const store = await openImageStore(root, { repackBelow: 1 }); // gc rewrites any pack with a dead chunk
  const v1 = randomBytes(cap);
  const w1 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  await writeAll(w1, 0, v1, MiB);
  await w1.commit();
  return { root, store, v1 };
}

async function age(root: string): Promise<void> {
  await agePacks(root, new Date(Date.now() - 60_000));
}

test('mixed whole, sub-aligned, unaligned, zero and overlapping writes over 5 cycles: every image reads, exports and verifies as written', async (t) => {
  const dir = await tempDir(t, 'overlay');
  const root = join(dir, 'store');
  const store = await openImageStore(root); // 1 MiB chunks, 64 KiB sub-chunks
  const cap = 8 * MiB + 5 * 4096; // a short last chunk
  let model = randomBytes(cap);
  const w1 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  await writeAll(w1, 0, model, MiB);
  await w1.commit();
  const versions = [Buffer.from(model)];
  let seed = 7;
  const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
  for (let c = 2; c <= 5; c++) {
    model = Buffer.from(model);
    const w = await store.beginCycle({ sourceId: 'vm', cycleId: `c${c}`, disks: [{ disk: 0, capacity: cap }] });
    const writes: [number, Buffer | null, number][] = [];
    writes.push([rnd(8) * MiB, randomBytes(MiB), MiB]);                      // a whole chunk
    writes.push([rnd(8) * MiB + rnd(16) * SUB, randomBytes(SUB), SUB]);       // one whole sub-chunk
    writes.push([rnd(8) * MiB + rnd(16) * SUB, null, SUB]);                   // a zeroed sub-chunk
    for (let k = 0; k < 20; k++) {                                           // small unaligned ones, some overlapping
      const len = 1 + rnd(3 * 4096);
      const off = rnd(cap - len);
      writes.push([off, randomBytes(len), len]);
    }
    writes.push([cap - 3 * 4096, randomBytes(3 * 4096), 3 * 4096]);           // into the short last chunk
    writes.push([3 * MiB - 1000, randomBytes(2 * SUB), 2 * SUB]);             // across a chunk boundary
    for (const [off, data, len] of writes) {
      await w.writeExtent(0, off, len, data);
      if (data) data.copy(model, off); else model.fill(0, off, off + len);
    }
    if (c === 3) await w.flush(); // a flush in the middle, then more writes on top of it
    await w.writeExtent(0, 5 * MiB + 100, 50, Buffer.alloc(50, 0xab));
    model.fill(0xab, 5 * MiB + 100, 5 * MiB + 150);
    const img = await w.commit();
    versions.push(Buffer.from(model));
    assert.equal(sha(await store.readImage('vm', img.imageId, 0, 0, cap)), sha(model), `image ${img.imageId} reads as written`);
  }
  for (let v = 0; v < versions.length; v++) {
    const id = String(v + 1);
    assert.equal(sha(await store.readImage('vm', id, 0, 0, cap)), sha(versions[v]!), `image ${id} is unchanged by later cycles`);
    const out = join(dir, `v${id}.raw`);
    await store.export('vm', id, 0, 'raw', out);
    assert.equal(sha(await readFile(out)), sha(versions[v]!), `export of image ${id}`);
    assert.equal((await store.verify('vm', id)).ok, true);
    // the digests a sender compares are those of the slots' bytes, overlays included
    const digests = await store.chunkDigests('vm', id, 0, 0, 9);
    for (let i = 0; i < 9; i++) {
      const bytes = versions[v]!.subarray(i * MiB, Math.min(cap, (i + 1) * MiB));
      assert.equal(digests.toString('hex', i * 32, i * 32 + 32), bytes.every((b) => b === 0) ? '0'.repeat(64) : chunkName(bytes), `image ${id} chunk ${i} digest`);
    }
  }
  // retention down to the newest image: everything left is referenced, the rest is collected
  await age(root);
  await store.applyRetention('vm', 1);
  assert.equal(sha(await store.readImage('vm', '5', 0, 0, cap)), sha(versions[4]!));
  assert.equal((await store.verify('vm', '5')).ok, true);
});

test('a 64 KiB change in a 1 MiB chunk stores 64 KiB, not a new 1 MiB chunk; a slot rewritten sub by sub lets its old chunk go', async (t) => {
  const cap = 4 * MiB;
  const { root, store, v1 } = await storeWithImage(t, 'overlay-cost', cap);
  const before = await chunkFiles(root);

  const w2 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
  const change = randomBytes(SUB);
  await w2.writeExtent(0, 2 * MiB + 3 * SUB, SUB, change);
  await w2.commit();
  const added = [...await chunkFiles(root)].filter((c) => !before.has(c));
  assert.equal(added.length, 1, 'one new chunk file');
  assert.equal(added[0], chunkName(change), 'named by the 64 KiB it holds');
  assert.equal((await chunkLocation(root, added[0]!)).length, SUB);
  const v2 = Buffer.from(v1); change.copy(v2, 2 * MiB + 3 * SUB);
  assert.equal(sha(await store.readImage('vm', '2', 0, 0, cap)), sha(v2));

  // rewrite every sub-chunk of chunk 1 in small pieces: the old chunk 1 is no longer needed
  const w3 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c3', disks: [{ disk: 0, capacity: cap }] });
  const v3 = Buffer.from(v2);
  for (let off = MiB; off < 2 * MiB; off += 4096) {
    const b = randomBytes(4096);
    await w3.writeExtent(0, off, 4096, b);
    b.copy(v3, off);
  }
  await w3.commit();
  const oldChunk1 = chunkName(v1.subarray(MiB, 2 * MiB));
  await store.removeImage('vm', '1');
  await store.removeImage('vm', '2');
  await age(root);
  await store.gc();
  assert.ok(!(await chunkFiles(root)).has(oldChunk1), 'the old chunk went with the images that used it');
  assert.equal(sha(await store.readImage('vm', '3', 0, 0, cap)), sha(v3));
  assert.equal((await store.verify('vm', '3')).ok, true);
});

test('verify names a corrupted sub-chunk by disk and offset; gc keeps sub-chunks an image uses', async (t) => {
  const cap = 2 * MiB;
  const { root, store } = await storeWithImage(t, 'overlay-verify', cap);
  const w2 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
  const change = randomBytes(SUB);
  await w2.writeExtent(0, MiB + 5 * SUB, SUB, change);
  await w2.commit();
  await store.removeImage('vm', '1');
  await age(root);
  await store.gc();
  const name = chunkName(change);
  assert.ok((await chunkFiles(root)).has(name), 'gc kept the sub-chunk image 2 uses');
  await corruptChunk(root, name, 100);
  const v = await store.verify('vm', '2');
  assert.equal(v.ok, false);
  assert.deepEqual(v.bad.map((b) => [b.disk, b.offset]), [[0, MiB + 5 * SUB]]);
  assert.match(v.bad[0]!.reason, /sub-chunk .* corrupt/);
});
