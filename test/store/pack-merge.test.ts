// gc merging small packs (src/store/pack-merge.ts): the pack count falls to what MERGE_BELOW and
// PACK_BYTES imply, images read back bit-identical, a second gc does nothing, an open cycle's packs
// are left alone, and a gc killed at each of the merge's crash points is finished by the next one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { cp, readFile, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openImageStore, type ImageStore } from '../../src/store/index.ts';
import { MERGE_BELOW, MERGE_MIN_PACKS } from '../../src/store/pack-merge.ts';
import { ENTRY_HEADER, PACK_MAGIC, type PackEntry } from '../../src/store/packs.ts';
import { PACK_BYTES } from '../../src/store/chunks.ts';
import { agePacks, leftovers, packFiles, packIndexes, run, scatter, sha, tempDir, writeAll } from './helpers.ts';

const MiB = 1 << 20;
const CAP = 12 * MiB;
const gcChild = fileURLToPath(new URL('./gc-child.ts', import.meta.url));



/** Bytes of pack file `id` (what MERGE_BELOW is compared with). */
async function packSize(root: string, id: string): Promise<number> {
  return (await stat(join(root, 'packs', `${id}.pack`))).size;
}

/**
 * Image 1: a full cycle of CAP bytes of random data (one pack, not small); then `cycles` incremental
 * cycles of `blocks` scattered 4 KiB changes each, each cycle one small pack of 64 KiB sub-chunks.
 * Returns every image's SHA-256 by id.
 */
async function hourlyCycles(store: ImageStore, cycles: number, blocks = 24, from = 1): Promise<Map<string, string>> {
  const digests = new Map<string, string>();
  let disk = from === 1 ? randomBytes(CAP) : await store.readImage('vm', String(from), 0, 0, CAP);
  if (from === 1) {
    const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c1', disks: [{ disk: 0, capacity: CAP }] });
    await writeAll(w, 0, disk, MiB);
    const img = await w.commit();
    digests.set(img.imageId, sha(disk));
  }
  for (let k = from + 1; k <= from + cycles; k++) {
    disk = Buffer.from(disk);
    const offs = scatter(disk, blocks);
    const w = await store.beginCycle({ sourceId: 'vm', cycleId: `c${k}`, disks: [{ disk: 0, capacity: CAP }] });
    for (const o of offs) await w.writeExtent(0, o, 4096, disk.subarray(o, o + 4096));
    const img = await w.commit();
    digests.set(img.imageId, sha(disk));
  }
  return digests;
}

async function imageDigests(store: ImageStore, ids: Iterable<string>): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const id of ids) out.set(id, sha(await store.readImage('vm', id, 0, 0, CAP)));
  return out;
}

/** How many packs a merge writes for `entries`, filling each to PACK_BYTES as gc does. */
function packsFor(entries: readonly PackEntry[]): number {
  let packs = 0; let size = 0;
  for (const e of entries) {
    if (size === 0) { packs++; size = PACK_MAGIC.length; }
    size += ENTRY_HEADER + e.length;
    if (size >= PACK_BYTES) size = 0;
  }
  return packs;
}

test('30 hourly cycles of scattered changes: gc merges their 30 small packs into full-sized ones; every image reads back bit-identical; a second gc does nothing', async (t) => {
  const root = join(await tempDir(t, 'merge'), 'store');
  const store = await openImageStore(root);
  t.after(() => store.close());
  const want = await hourlyCycles(store, 30);
  const before = await packIndexes(root);
  assert.equal(before.size, 31, 'one pack per cycle');
  const small = [];
  for (const [id, entries] of before) if (await packSize(root, id) < MERGE_BELOW) small.push(entries);
  assert.equal(small.length, 30, 'every incremental cycle made a small pack; the full one is not small');
  assert.deepEqual(await imageDigests(store, want.keys()), want);

  await agePacks(root, new Date(Date.now() - 60_000));
  const started = process.hrtime.bigint();
  const r = await store.gc();
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  const mergedBytes = small.flat().reduce((n, e) => n + e.length, 0);
  t.diagnostic(`merged ${r.mergedPacks} packs, ${(mergedBytes / MiB).toFixed(1)} MiB, in ${ms.toFixed(0)} ms`);
  assert.equal(r.mergedPacks, 30);
  assert.equal(r.mergedBytes, mergedBytes, 'every live byte of the small packs was copied once');
  assert.equal(r.removedChunks, 0, 'nothing was garbage');
  const after = await packIndexes(root);
  assert.equal(after.size, 1 + packsFor(small.flat()), 'the full pack, and the small ones merged into packs of 32 MiB');
  assert.ok(after.size <= 3);
  const entries = [...after.values()].flat();
  assert.equal(entries.length, new Set(entries.map((e) => e.hex)).size, 'no chunk is stored twice');
  assert.deepEqual(await leftovers(root), []);
  assert.deepEqual(await imageDigests(store, want.keys()), want, 'this process (its index changed by the merge) reads every image');
  const fresh = await openImageStore(root);
  t.after(() => fresh.close());
  assert.deepEqual(await imageDigests(fresh, want.keys()), want, 'a new process reads every image');
  assert.equal((await store.verify('vm', '31')).ok, true);

  await agePacks(root, new Date(Date.now() - 60_000));
  const files = await packFiles(root);
  const again = await store.gc();
  assert.deepEqual([again.mergedPacks, again.mergedBytes, again.removedPacks, again.repackedBytes], [0, 0, 0, 0]);
  assert.deepEqual(await packFiles(root), files, 'the second gc changed nothing');
});

test('a small pack shorter than its index: gc refuses to copy it (PACK_TRUNCATED, naming the pack and the fix) and deletes no pack', async (t) => {
  const root = join(await tempDir(t, 'merge-truncated'), 'store');
  const store = await openImageStore(root);
  t.after(() => store.close());
  await hourlyCycles(store, MERGE_MIN_PACKS + 2);
  const packs = await packIndexes(root);
  let damaged = '';
  for (const id of packs.keys()) if (await packSize(root, id) < MERGE_BELOW) { damaged = id; break; }
  const path = join(root, 'packs', `${damaged}.pack`);
  await truncate(path, (await packSize(root, damaged)) - 100);
  await agePacks(root, new Date(Date.now() - 60_000));
  const files = await packFiles(root);
  await assert.rejects(store.gc(), (e: Error & { code?: string; fix?: string }) => {
    assert.equal(e.code, 'PACK_TRUNCATED');
    assert.match(e.message, new RegExp(`pack ${damaged} is \\d+ bytes but its index names chunks up to byte \\d+`));
    assert.match(String(e.fix), /vmlift image verify/);
    return true;
  });
  const left = new Set(await packFiles(root));
  for (const f of files.filter((n) => n.endsWith('.pack'))) assert.ok(left.has(f), `${f} is still there`);
});

test('fewer than MERGE_MIN_PACKS small packs whose bytes fill no pack are left as they are', async (t) => {
  const root = join(await tempDir(t, 'merge-few'), 'store');
  const store = await openImageStore(root);
  t.after(() => store.close());
  await hourlyCycles(store, MERGE_MIN_PACKS - 1);
  await agePacks(root, new Date(Date.now() - 60_000));
  const files = await packFiles(root);
  const r = await store.gc();
  assert.equal(r.mergedPacks, 0);
  assert.deepEqual(await packFiles(root), files);
  await hourlyCycles(store, 1, 24, MERGE_MIN_PACKS);
  await agePacks(root, new Date(Date.now() - 60_000));
  assert.equal((await store.gc()).mergedPacks, MERGE_MIN_PACKS, 'the eighth small pack starts a merge');
});

test('a merge while a cycle is open leaves that cycle\'s sealed packs alone; the cycle commits and reads back bit-identical', async (t) => {
  const root = join(await tempDir(t, 'merge-open'), 'store');
  const store = await openImageStore(root);
  t.after(() => store.close());
  const want = await hourlyCycles(store, 10);
  const committed = new Set((await packIndexes(root)).keys());
  // the open cycle of the same disk: two flushes, so two sealed packs of its own
  const disk = await store.readImage('vm', '11', 0, 0, CAP);
  const offs = scatter(disk, 40);
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c-open', disks: [{ disk: 0, capacity: CAP }] });
  for (const [k, o] of offs.entries()) {
    await w.writeExtent(0, o, 4096, disk.subarray(o, o + 4096));
    if (k === 19) await w.flush();
  }
  await w.flush();
  const own = [...(await packIndexes(root)).keys()].filter((id) => !committed.has(id));
  assert.equal(own.length, 2);
  const ownBytes = await Promise.all(own.map(async (id) => sha(await readFile(join(root, 'packs', `${id}.pack`)))));
  await agePacks(root, new Date(Date.now() - 60_000)); // old enough: only the open cycle protects them

  const r = await store.gc();
  assert.equal(r.mergedPacks, 10, 'the 10 committed small packs were merged');
  const after = await packIndexes(root);
  for (const [k, id] of own.entries()) {
    assert.ok(after.has(id), `the open cycle's pack ${id} is still there`);
    assert.equal(sha(await readFile(join(root, 'packs', `${id}.pack`))), ownBytes[k]);
  }
  assert.deepEqual(await imageDigests(store, want.keys()), want);
  const img = await w.commit();
  assert.equal(sha(await store.readImage('vm', img.imageId, 0, 0, CAP)), sha(disk));
  assert.equal((await store.verify('vm', img.imageId)).ok, true);
});

test('kill -9 of a merging gc at each of its crash points: reads give the same SHA-256, the next gc finishes the merge, nothing is left behind', async (t) => {
  const dir = await tempDir(t, 'merge-crash');
  const base = join(dir, 'base');
  const seed = await openImageStore(base);
  const want = await hourlyCycles(seed, 12);
  await seed.close();
  await agePacks(base, new Date(Date.now() - 60_000));
  const smallEntries = [];
  for (const [id, entries] of await packIndexes(base)) if (await packSize(base, id) < MERGE_BELOW) smallEntries.push(...entries);
  const expectedPacks = 1 + packsFor(smallEntries);

  const points = ['store:pack-synced', 'store:pack-sealed', 'store:gc-merged', 'store:gc-merge-aside', 'store:gc-merge-aside:7'];
  for (const point of points) {
    const root = join(dir, point.replace(/[:]/g, '_'));
    await cp(base, root, { recursive: true, preserveTimestamps: true });
    const killed = await run(process.execPath, ['--import', 'tsx', gcChild, root], { VMLIFT_TEST_CRASH_AT: point });
    assert.equal(killed.signal, 'SIGKILL', `${point}: ${killed.err}`);

    const reader = await openImageStore(root);
    assert.deepEqual(await imageDigests(reader, want.keys()), want, `${point}: images read back after the kill`);
    await reader.close();

    const done = await run(process.execPath, ['--import', 'tsx', gcChild, root]);
    assert.equal(done.code, 0, `${point}: ${done.err}`);
    const r = JSON.parse(done.out) as { mergedPacks: number; mergedBytes: number; removedChunks: number };
    assert.equal(r.removedChunks, 0, point);
    assert.deepEqual(await leftovers(root), [], `${point}: nothing left behind`);
    const after = await packIndexes(root);
    const entries = [...after.values()].flat();
    assert.equal(entries.length, new Set(entries.map((e) => e.hex)).size, `${point}: no chunk is stored twice`);
    assert.equal(after.size, expectedPacks, `${point}: the merge is complete`);
    const check = await openImageStore(root);
    assert.deepEqual(await imageDigests(check, want.keys()), want, `${point}: images after the finishing gc`);
    assert.equal((await check.verify('vm', '13')).ok, true);
    await check.close();

    await agePacks(root, new Date(Date.now() - 60_000));
    const third = await run(process.execPath, ['--import', 'tsx', gcChild, root]);
    assert.equal(third.code, 0, third.err);
    assert.equal((JSON.parse(third.out) as { mergedPacks: number }).mergedPacks, 0, `${point}: a later gc has nothing to merge`);
  }
});
