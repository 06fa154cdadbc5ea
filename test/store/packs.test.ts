// Pack files (src/store/packs.ts): many chunks per file, gc repacking, crash safety of the new
// files, the store format version and `vmlift image migrate`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openImageStore, StoreError, type ImageStore } from '../../src/store/index.ts';
import { agePacks, chunkFiles, leftovers, packFiles, packIndexes, run, scatter, sha, tempDir, writeAll } from './helpers.ts';
import { readAt } from '../../src/store/packs.ts';

const MiB = 1 << 20;
const gcChild = fileURLToPath(new URL('./gc-child.ts', import.meta.url));
const crashWriter = fileURLToPath(new URL('./crash-writer.ts', import.meta.url));
const bin = fileURLToPath(new URL('../../bin/vmlift', import.meta.url));



test('a full cycle stores its chunks in a few packs; an incremental cycle of scattered 4 KiB changes adds one pack per flush, not a file per sub-chunk', async (t) => {
  const root = join(await tempDir(t, 'packs-layout'), 'store');
  const store = await openImageStore(root); // 1 MiB chunks, 64 KiB sub-chunks
  t.after(() => store.close());
  const cap = 48 * MiB;
  const v1 = randomBytes(cap);
  const w1 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  await writeAll(w1, 0, v1, MiB);
  await w1.commit();
  const packs1 = await packIndexes(root);
  assert.equal((await chunkFiles(root)).size, cap / MiB);
  assert.ok(packs1.size >= 2 && packs1.size <= 3, `48 chunks of 1 MiB in ${packs1.size} packs of up to 32 MiB`);
  assert.equal((await packFiles(root)).length, 2 * packs1.size, 'a .pack and its .idx each, nothing else');

  const v2 = Buffer.from(v1);
  const offs = scatter(v2, 400);
  const w2 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
  for (const [k, o] of offs.entries()) {
    await w2.writeExtent(0, o, 4096, v2.subarray(o, o + 4096));
    if ((k + 1) % 100 === 0) await w2.flush();
  }
  await w2.commit();
  const packs2 = await packIndexes(root);
  // a sub-chunk is stored once per flush that saw it change (its bytes at that flush)
  const subChunks = new Set(offs.map((o, k) => `${Math.floor(k / 100)}:${Math.floor(o / (64 << 10))}`)).size;
  assert.equal(packs2.size - packs1.size, 4, 'one pack per flush');
  assert.equal((await chunkFiles(root)).size, cap / MiB + subChunks, 'one stored 64 KiB sub-chunk per touched sub-chunk');
  assert.equal(sha(await store.readImage('vm', '2', 0, 0, cap)), sha(v2));
  assert.equal(sha(await store.readImage('vm', '1', 0, 0, cap)), sha(v1));
  assert.equal((await store.verify('vm', '2')).ok, true);
  const out = join(root, '..', 'v2.raw');
  await store.export('vm', '2', 0, 'raw', out);
  assert.equal(sha(await readFile(out)), sha(v2));
  assert.deepEqual(await leftovers(root), []);
});

/** Image 1 (32 chunks of 64 KiB, one pack) and image 2 rewriting 24 of them: image 1's pack is a quarter live once image 1 goes. */
async function quarterLive(t: Parameters<typeof tempDir>[0], name: string) {
  const root = join(await tempDir(t, name), 'store');
  const cs = 64 << 10; const cap = 32 * cs;
  const store = await openImageStore(root, { chunkSize: cs });
  const v1 = randomBytes(cap);
  const w1 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  await writeAll(w1, 0, v1, cs);
  await w1.commit();
  const v2 = Buffer.from(v1);
  randomBytes(24 * cs).copy(v2, 0);
  const w2 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
  await writeAll(w2, 0, v2.subarray(0, 24 * cs), cs);
  await w2.commit();
  await store.removeImage('vm', '1');
  await agePacks(root, new Date(Date.now() - 60_000));
  return { root, store, cs, cap, v2 };
}

test('gc rewrites a pack less than half live (its live chunks copied, the pack deleted) and keeps one more than half live', async (t) => {
  const { root, store, cs, cap, v2 } = await quarterLive(t, 'packs-gc');
  t.after(() => store.close());
  assert.equal((await packIndexes(root)).size, 2);
  const r = await store.gc();
  assert.equal(r.repackedChunks, 8, 'the 8 chunks image 2 still uses were copied');
  assert.equal(r.removedChunks, 24);
  assert.equal(r.removedBytes, 24 * cs);
  assert.equal(r.removedPacks, 1);
  assert.equal((await chunkFiles(root)).size, 32);
  assert.equal(sha(await store.readImage('vm', '2', 0, 0, cap)), sha(v2));
  assert.equal((await store.verify('vm', '2')).ok, true);

  // image 3 rewrites 8 of image 2's 24 new chunks: once image 2 goes, that pack is two thirds live and stays
  const v3 = Buffer.from(v2);
  randomBytes(8 * cs).copy(v3, 0);
  const w3 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c3', disks: [{ disk: 0, capacity: cap }] });
  await writeAll(w3, 0, v3.subarray(0, 8 * cs), cs);
  await w3.commit();
  await agePacks(root, new Date(Date.now() - 60_000));
  const before = await chunkFiles(root);
  assert.deepEqual(await store.applyRetention('vm', 1), ['2']);
  assert.deepEqual(await chunkFiles(root), before, 'no pack was below half live: nothing rewritten');
  assert.equal(sha(await store.readImage('vm', '3', 0, 0, cap)), sha(v3));
  assert.equal((await store.verify('vm', '3')).ok, true);
  assert.deepEqual(await leftovers(root), []);
});

test('kill -9 of a gc after its repack, and after it set the old pack aside: the next gc finishes; a reader with a stale index still reads', async (t) => {
  const { root, store, cap, v2 } = await quarterLive(t, 'packs-gc-crash');
  await store.close();
  // a reader in this process that loaded the pack index before the other processes changed the packs
  const reader: ImageStore = await openImageStore(root);
  t.after(() => reader.close());
  assert.equal(sha(await reader.readImage('vm', '2', 0, 0, cap)), sha(v2));

  const a = await run(process.execPath, ['--import', 'tsx', gcChild, root], { VMLIFT_TEST_CRASH_AT: 'store:gc-repacked' });
  assert.equal(a.signal, 'SIGKILL', a.err);
  assert.equal((await packIndexes(root)).size, 3, 'the new pack is sealed; the old one is still there');
  const b = await run(process.execPath, ['--import', 'tsx', gcChild, root], { VMLIFT_TEST_CRASH_AT: 'store:gc' });
  assert.equal(b.signal, 'SIGKILL', b.err);
  assert.equal((await leftovers(root)).filter((n) => n.startsWith('.gc-')).length, 1, 'the old pack was set aside');
  assert.equal(sha(await reader.readImage('vm', '2', 0, 0, cap)), sha(v2), 'the live chunks are read from their new pack');

  const c = await run(process.execPath, ['--import', 'tsx', gcChild, root]);
  assert.equal(c.code, 0, c.err);
  const r = JSON.parse(c.out) as { removedPacks: number; repackedChunks: number };
  assert.deepEqual([r.removedPacks, r.repackedChunks], [1, 0], 'the copies of the first run are used, not made again');
  assert.deepEqual(await leftovers(root), []);
  const entries = [...(await packIndexes(root)).values()].flat();
  assert.equal(entries.length, new Set(entries.map((e) => e.hex)).size, 'no chunk is stored twice');
  assert.equal(sha(await reader.readImage('vm', '2', 0, 0, cap)), sha(v2));
  assert.equal((await reader.verify('vm', '2')).ok, true);
});

for (const point of ['store:pack-synced:3', 'store:pack-sealed:3']) {
  test(`kill -9 of a writer at ${point}: the cycle resumes from its last flush, the unsealed pack is garbage, the image is bit-identical`, async (t) => {
    const dir = await tempDir(t, 'packs-crash');
    const root = join(dir, 'store');
    const cs = 64 << 10; const cap = 8 * MiB;
    const store = await openImageStore(root, { chunkSize: cs });
    t.after(() => store.close());
    const v1 = randomBytes(cap);
    const w1 = await store.beginCycle({ sourceId: 'crash', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
    await writeAll(w1, 0, v1, cs);
    await w1.commit();
    const v2 = Buffer.from(v1);
    scatter(v2, 200);
    randomBytes(MiB).copy(v2, 3 * MiB);
    const src = join(dir, 'v2.raw');
    await writeFile(src, v2);
    const extent = 100_000;
    const child = await run(process.execPath, ['--import', 'tsx', crashWriter, root, src, String(extent), '8', '0'], { VMLIFT_TEST_CRASH_AT: point });
    assert.equal(child.signal, 'SIGKILL', child.err);
    const flushed = child.out.split('\n').filter((l) => l.startsWith('flushed ')).map((l) => Number(l.slice(8)));
    assert.equal(flushed.length, 2, 'killed in the third flush');

    const w2 = await store.beginCycle({ sourceId: 'crash', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
    const held = (await w2.held())[0]!.ranges;
    assert.deepEqual(held, [{ offset: 0, length: flushed[1]! }], 'exactly what the last finished flush claimed');
    for (let o = held[0]!.length; o < cap; o += extent) {
      const len = Math.min(extent, cap - o);
      await w2.writeExtent(0, o, len, v2.subarray(o, o + len));
    }
    await w2.commit({ expected: [{ disk: 0, ranges: [{ offset: 0, length: cap }] }] });
    assert.equal(sha(await store.readImage('crash', '2', 0, 0, cap)), sha(v2));
    assert.equal((await store.verify('crash', '2')).ok, true);
    await store.gc();
    assert.deepEqual(await leftovers(root), [], 'the dead writer\'s unsealed pack is gone');
    assert.equal(sha(await store.readImage('crash', '1', 0, 0, cap)), sha(v1));
  });
}

test('a store of another format version is refused, naming both versions and the fix', async (t) => {
  const dir = await tempDir(t, 'packs-version');
  const root = join(dir, 'store');
  await mkdir(root);
  await writeFile(join(root, 'store.json'), JSON.stringify({ version: 1, chunkSize: MiB }));
  await assert.rejects(openImageStore(root), (e: unknown) => e instanceof StoreError && e.code === 'STORE_VERSION'
    && /store format 1/.test(e.message) && /store format 2/.test(e.message) && (e.fix ?? '').includes(`vmlift image migrate --data-dir ${dir}`));
  await writeFile(join(root, 'store.json'), JSON.stringify({ version: 3, chunkSize: MiB }));
  await assert.rejects(openImageStore(root), (e: unknown) => e instanceof StoreError && e.code === 'STORE_VERSION' && /format 3/.test(e.message) && /newer vmlift/.test(e.fix ?? ''));
});

/**
 * Rewrite a store as format 1 would have left it: one file per chunk under chunks/<hh>/ named by the
 * plain SHA-256 of its bytes, the image indexes and overlays naming those, no packs.
 */
async function toFormat1(root: string): Promise<number> {
  const old = new Map<string, Buffer>();
  for (const [id, entries] of await packIndexes(root)) {
    for (const e of entries) {
      const data = await readAt(join(root, 'packs', `${id}.pack`), e.offset, e.length);
      const hex = sha(data);
      old.set(e.hex, Buffer.from(hex, 'hex'));
      await mkdir(join(root, 'chunks', hex.slice(0, 2)), { recursive: true });
      await writeFile(join(root, 'chunks', hex.slice(0, 2), hex), data);
    }
  }
  const rename = (b: Buffer, at: number) => { const o = old.get(b.toString('hex', at, at + 32)); if (o) o.copy(b, at); };
  const imagesDir = join(root, 'sources', 'vm', 'images');
  for (const img of await readdir(imagesDir)) {
    for (const n of await readdir(join(imagesDir, img))) {
      const path = join(imagesDir, img, n);
      if (!/^disk-[0-9]+\.(idx|sub)$/.test(n)) continue;
      const b = await readFile(path);
      if (n.endsWith('.idx')) for (let k = 0; k < b.length; k += 32) rename(b, k);
      else for (let k = 0; k + 38 <= b.length; k += 38) rename(b, k + 6);
      await writeFile(path, b);
    }
  }
  await mkdir(join(root, 'chunks', 'ab'), { recursive: true });
  await writeFile(join(root, 'chunks', 'ab', '.tmp-999999-1'), 'a dead writer\'s temp file');
  await rm(join(root, 'packs'), { recursive: true });
  const meta = JSON.parse(await readFile(join(root, 'store.json'), 'utf8')) as { chunkSize: number };
  await writeFile(join(root, 'store.json'), JSON.stringify({ version: 1, chunkSize: meta.chunkSize }));
  return old.size;
}

test('vmlift image migrate converts a format 1 store in place; killed at each step and run again, it resumes; images stay bit-identical', async (t) => {
  const dataDir = await tempDir(t, 'packs-migrate');
  const root = join(dataDir, 'store');
  const cs = 64 << 10; const cap = 4 * MiB;
  const store = await openImageStore(root, { chunkSize: cs });
  const v1 = randomBytes(cap);
  const w1 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  await writeAll(w1, 0, v1, cs);
  await w1.commit();
  const v2 = Buffer.from(v1);
  const offs = scatter(v2, 40);
  const w2 = await store.beginCycle({ sourceId: 'vm', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
  for (const o of offs) await w2.writeExtent(0, o, 4096, v2.subarray(o, o + 4096)); // sub-chunk overlays
  await w2.commit();
  await store.close();
  const chunks = await toFormat1(root);

  const D = ['--data-dir', dataDir];
  const ls = await run(bin, ['image', 'ls', ...D]);
  assert.equal(ls.code, 1);
  assert.match(ls.err, /store format 1.*store format 2/s);
  assert.match(ls.err, /vmlift image migrate --data-dir/);

  const k1 = await run(bin, ['image', 'migrate', ...D], { VMLIFT_TEST_CRASH_AT: 'store:migrate:1' });
  assert.equal(k1.signal, 'SIGKILL', k1.err);
  assert.equal((JSON.parse(await readFile(join(root, 'store.json'), 'utf8')) as { version: number }).version, 1, 'still format 1 until every chunk is packed');
  const k2 = await run(bin, ['image', 'migrate', ...D, '--json'], { VMLIFT_TEST_CRASH_AT: 'store:migrate-switched' });
  assert.equal(k2.signal, 'SIGKILL', k2.err);
  assert.equal((JSON.parse(await readFile(join(root, 'store.json'), 'utf8')) as { version: number }).version, 2);
  assert.ok(await stat(join(root, 'chunks')).catch(() => null), 'the old chunk files were not removed yet');
  const done = await run(bin, ['image', 'migrate', ...D, '--json']);
  assert.equal(done.code, 0, done.err);
  assert.deepEqual(JSON.parse(done.out), { root, from: 2, to: 2, chunks: 0, bytes: 0, packs: 0, alreadyPacked: 0, rewrittenFiles: 0, refitted: 0, missing: 0 });
  assert.equal(await stat(join(root, 'chunks')).catch(() => null), null, 'chunks/ is gone');
  assert.equal((await chunkFiles(root)).size, chunks);
  assert.deepEqual(await leftovers(root), []);

  const migrated = await openImageStore(root);
  t.after(() => migrated.close());
  assert.equal(sha(await migrated.readImage('vm', '1', 0, 0, cap)), sha(v1));
  assert.equal(sha(await migrated.readImage('vm', '2', 0, 0, cap)), sha(v2));
  for (const id of ['1', '2']) assert.equal((await migrated.verify('vm', id)).ok, true);
});

test('a resumed migration skips the chunks an interrupted one packed', async (t) => {
  const dataDir = await tempDir(t, 'packs-migrate-resume');
  const root = join(dataDir, 'store');
  const store = await openImageStore(root, { chunkSize: 64 << 10 });
  const v = randomBytes(2 * MiB);
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: v.length }] });
  await writeAll(w, 0, v, 64 << 10);
  await w.commit();
  await store.close();
  const chunks = await toFormat1(root);
  const k = await run(bin, ['image', 'migrate', '--data-dir', dataDir], { VMLIFT_TEST_CRASH_AT: 'store:migrate:1' });
  assert.equal(k.signal, 'SIGKILL', k.err);
  const r = await run(bin, ['image', 'migrate', '--data-dir', dataDir, '--json']);
  assert.equal(r.code, 0, r.err);
  const res = JSON.parse(r.out) as { from: number; to: number; chunks: number; alreadyPacked: number };
  assert.deepEqual([res.from, res.to, res.chunks, res.alreadyPacked], [1, 2, 0, chunks]);
  const s = await openImageStore(root);
  t.after(() => s.close());
  assert.equal(sha(await s.readImage('vm', '1', 0, 0, v.length)), sha(v));
});
