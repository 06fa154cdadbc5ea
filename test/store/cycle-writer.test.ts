import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { openImageStore, StoreError } from '../../src/store/index.ts';
import { agePacks, chunkFiles, randomDisk, scatter, sha, storeWithImage, tempDir, writeAll } from './helpers.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';

const CS = 64 << 10;

async function exportSha(store: Awaited<ReturnType<typeof openImageStore>>, dir: string, src: string, img: string, disk = 0): Promise<string> {
  const out = join(dir, `out-${src}-${img}-${disk}-${Math.random()}.raw`);
  await store.export(src, img, disk, 'raw', out);
  return sha(await readFile(out));
}

test('full then incremental cycle: exports match, old image keeps old content, only touched sub-chunks are written', async (t) => {
  const dir = await tempDir(t);
  const root = join(dir, 'store');
  const store = await openImageStore(root, { chunkSize: CS });
  const cap = 16 << 20;
  const v1 = randomDisk(cap);
  const w1 = await store.beginCycle({ sourceId: 'vm-1', cycleId: 'c1', disks: [{ disk: 0, capacity: cap, label: 'scsi0:0' }] });
  assert.equal(w1.chunkSize, CS);
  await writeAll(w1, 0, v1, 192 << 10); // extents straddle chunk borders
  const img1 = await w1.commit({ meta: { changeId: 'a/1' }, expected: [{ disk: 0, ranges: [{ offset: 0, length: cap }] }] });
  assert.equal(img1.imageId, '1');
  assert.equal(img1.baseImageId, null);
  assert.deepEqual(img1.meta, { changeId: 'a/1' });
  const holes = Array.from({ length: cap / CS }, (_, i) => v1.subarray(i * CS, (i + 1) * CS).every((x) => x === 0)).filter(Boolean).length;
  assert.equal(img1.disks[0]!.chunkCount, cap / CS - holes);
  assert.equal(img1.disks[0]!.allocatedBytes, (cap / CS - holes) * CS);
  assert.equal(await exportSha(store, dir, 'vm-1', '1'), sha(v1));
  // the raw export is sparse: holes take no space
  const st = await stat(join(dir, (await readdir(dir)).find((n) => n.startsWith('out-vm-1-1'))!));
  assert.ok(st.blocks * 512 <= img1.disks[0]!.allocatedBytes + (1 << 20), `export allocates ${st.blocks * 512}`);
  await store.gc();
  const before = await chunkFiles(root);

  const v2 = Buffer.from(v1);
  const offs = scatter(v2, 20);
  // partial writes store only the sub-chunks (1/16 of a chunk) they touch (src/store/overlay.ts)
  const sub = CS / 16;
  const touched = new Set(offs.flatMap((o) => [Math.floor(o / sub), Math.floor((o + 4095) / sub)]));
  const w2 = await store.beginCycle({ sourceId: 'vm-1', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
  assert.equal(w2.baseImageId, '1');
  await Promise.all(offs.map((o) => w2.writeExtent(0, o, 4096, v2.subarray(o, o + 4096))));
  const img2 = await w2.commit({ expected: [{ disk: 0, ranges: offs.map((o) => ({ offset: o, length: 4096 })) }] });
  assert.equal(img2.imageId, '2');
  assert.equal(img2.baseImageId, '1');
  const after = await chunkFiles(root);
  const added = [...after].filter((c) => !before.has(c));
  assert.equal(added.length, touched.size, 'one new sub-chunk per touched sub-chunk, nothing else rewritten');
  assert.ok([...before].every((c) => after.has(c)), 'no chunk of image 1 was modified or removed');
  assert.equal(await exportSha(store, dir, 'vm-1', '2'), sha(v2));
  assert.equal(await exportSha(store, dir, 'vm-1', '1'), sha(v1), 'image 1 still exports the old content');
  assert.deepEqual((await store.listImages('vm-1')).map((i) => i.imageId), ['1', '2']);
  assert.deepEqual(await store.openCycles('vm-1'), []);
  assert.equal((await store.verify('vm-1', '2')).ok, true);

  // random access reads, including across chunk borders and holes
  for (const [o, l] of [[0, 10], [CS - 100, 300], [offs[0]!, 4096], [cap - 777, 777], [12345, 3 * CS]] as const) {
    assert.ok((await store.readImage('vm-1', '2', 0, o, l)).equals(v2.subarray(o, o + l)), `read ${o}+${l}`);
  }
  // chunk digests are each chunk's name, its tree digest (zeros for holes)
  const dg = await store.chunkDigests('vm-1', '2', 0, 0, 1000);
  assert.equal(dg.length, (cap / CS) * 32);
  for (let i = 0; i < cap / CS; i++) {
    const c = v2.subarray(i * CS, (i + 1) * CS);
    const slot = dg.subarray(i * 32, i * 32 + 32);
    assert.equal(slot.toString('hex'), c.every((x) => x === 0) ? '0'.repeat(64) : treeDigest(c).toString('hex'));
  }
  await store.close();
});

test('identical chunks across disks and sources are stored once; stats shows the dedup ratio', async (t) => {
  const dir = await tempDir(t);
  const root = join(dir, 'store');
  const store = await openImageStore(root, { chunkSize: CS });
  const cap = 4 << 20;
  const data = randomBytes(cap);
  for (const src of ['a', 'b']) {
    const w = await store.beginCycle({ sourceId: src, cycleId: 'x', disks: [{ disk: 0, capacity: cap }, { disk: 1, capacity: cap }] });
    await writeAll(w, 0, data, CS);
    await writeAll(w, 1, data, 3 * CS);
    await w.commit();
  }
  assert.equal((await chunkFiles(root)).size, cap / CS);
  const s = await store.stats();
  assert.equal(s.logicalBytes, 4 * cap);
  assert.equal(s.storedBytes, cap);
  assert.equal(s.dedupRatio, 4);
  assert.deepEqual(await store.listSources(), ['a', 'b']);
});

test('sha256 hint names whole chunks without hashing; zero chunks become holes; capacity not a chunk multiple', async (t) => {
  const dir = await tempDir(t);
  const store = await openImageStore(join(dir, 'store'), { chunkSize: CS });
  const cap = 3 * CS + 1536;
  const v = randomBytes(cap);
  v.fill(0, CS, 2 * CS);
  const w = await store.beginCycle({ sourceId: 's', cycleId: 'c', disks: [{ disk: 0, capacity: cap }] });
  for (let o = 0; o < cap; o += CS) {
    const part = v.subarray(o, Math.min(cap, o + CS));
    await w.writeExtent(0, o, part.length, part, { sha256: treeDigest(part) });
  }
  const img = await w.commit();
  assert.equal(img.disks[0]!.chunkCount, 3);
  assert.equal(img.disks[0]!.allocatedBytes, 2 * CS + 1536);
  assert.equal(sha(await store.readImage('s', '1', 0, 0, cap)), sha(v));
  assert.equal((await store.verify('s', '1')).ok, true);
});

test('overlapping concurrent writes apply in call order; zero extents punch holes', async (t) => {
  const dir = await tempDir(t);
  const store = await openImageStore(join(dir, 'store'), { chunkSize: CS });
  const cap = 1 << 20;
  const w = await store.beginCycle({ sourceId: 's', cycleId: 'c', disks: [{ disk: 0, capacity: cap }] });
  const a = randomBytes(cap);
  const b = randomBytes(100_000);
  const c = randomBytes(5000);
  const p = [
    w.writeExtent(0, 0, cap, a),
    w.writeExtent(0, 30_000, b.length, b),
    w.writeExtent(0, 60_000, 5000, c),
    w.writeExtent(0, 2 * CS, CS, null),
    w.writeExtent(0, 2 * CS + 10, 10, Buffer.alloc(10, 7)),
  ];
  await Promise.all(p);
  await w.commit();
  const want = Buffer.from(a);
  b.copy(want, 30_000); c.copy(want, 60_000); want.fill(0, 2 * CS, 3 * CS); want.fill(7, 2 * CS + 10, 2 * CS + 20);
  assert.equal(sha(await store.readImage('s', '1', 0, 0, cap)), sha(want));
});

test('refusals: OUT_OF_RANGE, BAD_DISK, BAD_LENGTH, MISSING_EXTENTS, bad ids, unknown image', async (t) => {
  const dir = await tempDir(t);
  const root = join(dir, 'store');
  const store = await openImageStore(root, { chunkSize: CS });
  const cap = 1 << 20;
  const code = (c: string) => (e: unknown) => e instanceof StoreError && e.code === c;
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }, { disk: 1, capacity: cap }] });
  await assert.rejects(w.writeExtent(0, cap - 512, 1024, Buffer.alloc(1024)), (e: unknown) => code('OUT_OF_RANGE')(e) && /outside disk 0/.test((e as Error).message));
  await assert.rejects(w.writeExtent(0, -1, 10, null), code('OUT_OF_RANGE'));
  await assert.rejects(w.writeExtent(2, 0, 10, null), code('BAD_DISK'));
  await assert.rejects(w.writeExtent(0, 0, 10, Buffer.alloc(9)), code('BAD_LENGTH'));
  await w.writeExtent(0, 0, 4096, randomBytes(4096));
  await w.writeExtent(1, 0, cap, randomBytes(cap));
  await assert.rejects(w.commit({ expected: [{ disk: 1, ranges: [{ offset: 0, length: cap }] }, { disk: 0, ranges: [{ offset: 0, length: 8192 }] }] }),
    (e: unknown) => code('MISSING_EXTENTS')(e) && /disk 0 is missing bytes 4096-8191/.test((e as Error).message));
  assert.deepEqual(await store.listImages('vm'), [], 'a refused commit publishes nothing');
  // the cycle stays open: the sender can send the rest and commit
  await w.writeExtent(0, 4096, 4096, randomBytes(4096));
  const img = await w.commit({ expected: [{ disk: 0, ranges: [{ offset: 0, length: 8192 }] }] });
  assert.equal(img.imageId, '1');
  await assert.rejects(w.writeExtent(0, 0, 1, Buffer.alloc(1)), code('CYCLE_CLOSED'));

  for (const bad of ['../x', 'A', '', 'a/b', '-a', 'a'.repeat(65)]) {
    await assert.rejects(store.beginCycle({ sourceId: bad, cycleId: 'c', disks: [{ disk: 0, capacity: cap }] }), /invalid source id/);
    await assert.rejects(store.beginCycle({ sourceId: 'vm', cycleId: bad, disks: [{ disk: 0, capacity: cap }] }), /invalid cycle id/);
    await assert.rejects(store.listImages(bad), /invalid source id/);
  }
  await assert.rejects(store.getImage('vm', '../1'), /invalid image id/);
  await assert.rejects(store.getImage('vm', '7'), code('NOT_FOUND'));
  await assert.rejects(store.getImage('nope', '1'), code('NOT_FOUND'));
  await assert.rejects(store.readImage('vm', '1', 5, 0, 1), (e: unknown) => code('NOT_FOUND')(e) && /no disk 5/.test((e as Error).message));
  await assert.rejects(store.readImage('vm', '1', 0, cap, 1), code('OUT_OF_RANGE'));
  await assert.rejects(store.beginCycle({ sourceId: 'vm', cycleId: 'c2', disks: [{ disk: 0, capacity: 1000 }] }), code('BAD_DISK'));
  await assert.rejects(store.beginCycle({ sourceId: 'vm', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }], baseImageId: '9' }), code('NOT_FOUND'));
  assert.deepEqual(await readdir(join(root, 'sources')), ['vm'], 'bad ids never became paths');
  assert.deepEqual(await store.openCycles('vm'), []);
});

test('abort leaves nothing visible and the previous image intact; gc removes the aborted chunks', async (t) => {
  const cap = 2 << 20;
  const { root, store, v1 } = await storeWithImage(t, { chunkSize: CS, capacity: cap });
  const kept = await chunkFiles(root);
  const w2 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
  await writeAll(w2, 0, randomBytes(cap), 100_000);
  await w2.flush();
  assert.deepEqual(await store.openCycles('vm'), ['c2']);
  await w2.abort();
  assert.deepEqual(await store.openCycles('vm'), []);
  assert.deepEqual((await store.listImages('vm')).map((i) => i.imageId), ['1']);
  assert.equal(sha(await store.readImage('vm', '1', 0, 0, cap)), sha(v1));
  // chunks younger than gc's grace period are kept; age them to see them go
  await agePacks(root, new Date(Date.now() - 60_000));
  const r = await store.gc();
  assert.ok(r.removedChunks > 0);
  assert.deepEqual(await chunkFiles(root), kept);
  assert.equal((await store.verify('vm', '1')).ok, true);
});

test('a 64 GiB sparse disk: cycle, read, verify and sparse export with bounded memory', async (t) => {
  const dir = await tempDir(t);
  const store = await openImageStore(join(dir, 'store')); // default chunk size
  const cap = 64 * 2 ** 30;
  const rss0 = process.memoryUsage().rss;
  const w = await store.beginCycle({ sourceId: 'big', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  const parts = [[0, randomBytes(3 << 20)], [cap / 2 + 12345, randomBytes(777_777)], [cap - (1 << 20), randomBytes(1 << 20)]] as const;
  for (const [o, b] of parts) await w.writeExtent(0, o, b.length, b);
  const img = await w.commit({ expected: [{ disk: 0, ranges: parts.map(([o, b]) => ({ offset: o, length: b.length })) }] });
  assert.equal(img.disks[0]!.chunkCount, 3 + 1 + 1);
  for (const [o, b] of parts) assert.ok((await store.readImage('big', '1', 0, o, b.length)).equals(b));
  assert.ok((await store.readImage('big', '1', 0, 10 << 20, 1 << 20)).equals(Buffer.alloc(1 << 20)));
  // 3 + 1 whole chunks, and the 777,777-byte extent inside one chunk as 13 sub-chunks of 64 KiB (overlay.ts)
  assert.deepEqual(await store.verify('big', '1'), { ok: true, chunks: 3 + 1 + 13, bad: [] });
  const out = join(dir, 'big.raw');
  await store.export('big', '1', 0, 'raw', out);
  const st = await stat(out);
  assert.equal(st.size, cap);
  assert.ok(st.blocks * 512 < 64 << 20, `sparse export allocates ${st.blocks * 512} bytes`);
  const { open } = await import('node:fs/promises');
  const fh = await open(out, 'r');
  for (const [o, b] of parts) {
    const got = Buffer.alloc(b.length);
    await fh.read(got, 0, b.length, o);
    assert.ok(got.equals(b), `exported bytes at ${o}`);
  }
  await fh.close();
  const grew = process.memoryUsage().rss - rss0;
  assert.ok(grew < 128 << 20, `RSS grew by ${grew >> 20} MiB`);
});

test('writes keep flowing while flushes run; held() reports only completed, durable ranges', async (t) => {
  const dir = await tempDir(t);
  const store = await openImageStore(join(dir, 'store'), { chunkSize: CS });
  const cap = 8 << 20;
  const v = randomBytes(cap);
  const w = await store.beginCycle({ sourceId: 's', cycleId: 'c', disks: [{ disk: 0, capacity: cap }] });
  const writes: Promise<void>[] = [];
  const flushes: Promise<void>[] = [];
  const ext = 50_000;
  for (let o = 0, k = 0; o < cap; o += ext, k++) {
    const len = Math.min(ext, cap - o);
    writes.push(w.writeExtent(0, o, len, v.subarray(o, o + len)));
    if (k % 13 === 0) flushes.push(w.flush());
  }
  await Promise.all(flushes);
  const mid = (await w.held())[0]!.ranges;
  for (const r of mid) assert.ok(r.offset >= 0 && r.offset + r.length <= cap);
  await Promise.all(writes);
  await w.flush();
  assert.deepEqual((await w.held())[0]!.ranges, [{ offset: 0, length: cap }]);
  await w.commit({ expected: [{ disk: 0, ranges: [{ offset: 0, length: cap }] }] });
  assert.equal(sha(await store.readImage('s', '1', 0, 0, cap)), sha(v));
});

test('a crash after publishing the image but before removing the cycle folder does not publish twice', async (t) => {
  const dir = await tempDir(t);
  const root = join(dir, 'store');
  const store = await openImageStore(root, { chunkSize: CS });
  const cap = 1 << 20;
  const v = randomBytes(cap);
  const w = await store.beginCycle({ sourceId: 's', cycleId: 'c', disks: [{ disk: 0, capacity: cap }] });
  await writeAll(w, 0, v, CS);
  await w.flush();
  const { cp } = await import('node:fs/promises');
  const cdir = join(root, 'sources', 's', 'cycles', 'c');
  await cp(cdir, join(dir, 'cycle-backup'), { recursive: true });
  const img = await w.commit();
  await cp(join(dir, 'cycle-backup'), cdir, { recursive: true }); // as if the cleanup never ran
  const again = await openImageStore(root);
  const w2 = await again.beginCycle({ sourceId: 's', cycleId: 'c', disks: [{ disk: 0, capacity: cap }] });
  assert.deepEqual((await w2.held())[0]!.ranges, [{ offset: 0, length: cap }]);
  const img2 = await w2.commit();
  assert.equal(img2.imageId, img.imageId);
  assert.deepEqual((await again.listImages('s')).map((i) => i.imageId), ['1']);
  assert.deepEqual(await again.openCycles('s'), []);
  // a sender that found the image by its cycle id never commits again: listing the open cycles finishes it
  await cp(join(dir, 'cycle-backup'), cdir, { recursive: true });
  const third = await openImageStore(root);
  assert.deepEqual(await third.openCycles('s'), [], 'a published cycle is not an open one');
  assert.equal((await stat(cdir).catch(() => null)), null, 'its folder is gone');
  assert.deepEqual((await third.listImages('s')).map((i) => i.imageId), ['1']);
});
