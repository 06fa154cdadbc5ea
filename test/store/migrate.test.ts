// `vmlift image migrate` on a format 1 store built by hand (chunk files named by the plain SHA-256 of
// their bytes under chunks/<hh>/, indexes, overlays and a cycle's refs.log naming them): the store
// becomes format 2 with every chunk named by its tree digest, images read back bit-identical and
// verify, and a kill at each crash point followed by a rerun gives the same store.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openImageStore } from '../../src/store/index.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';
import { MigrateMap } from '../../src/store/migrate-map.ts';
import { chunkFiles, run, sha, tempDir } from './helpers.ts';

const bin = fileURLToPath(new URL('../../bin/vmlift', import.meta.url));
const CS = 64 << 10;
const SS = CS / 16;
const DEAD_PID = 2147483646;

const migrate = (args: string[], env: Record<string, string> = {}) => run(bin, ['image', 'migrate', ...args], env);

const sha256 = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();
const ZERO = Buffer.alloc(32);

function overlayRecord(slot: number, sub: number, digest: Buffer): Buffer {
  const r = Buffer.alloc(38);
  r.writeUInt32BE(slot, 0); r.writeUInt16BE(sub, 4); digest.copy(r, 6);
  return r;
}

/** Bytes of a disk from its slots (chunk bytes or null = hole) with sub-chunks laid over them, as format 1 read them. */
function diskBytes(capacity: number, slots: (Buffer | null)[], subs: [number, number, Buffer | null][]): Buffer {
  const out = Buffer.alloc(capacity);
  slots.forEach((c, i) => { if (c) c.copy(out, i * CS, 0, Math.min(c.length, CS, capacity - i * CS)); });
  for (const [slot, sub, d] of subs) {
    const at = slot * CS + sub * SS;
    const end = Math.min(at + SS, capacity, (slot + 1) * CS);
    if (d) d.copy(out, at, 0, end - at); else out.fill(0, at, end);
  }
  return out;
}

interface Built { expected: Map<string, Buffer>; cycle: Buffer; chunks: number }

/**
 * A format 1 store as the format 1 writer left it, holding: a hole slot and a slot naming the old
 * hole digest SHA-256(64 KiB of zeros); a short last chunk; that chunk read as a full slot of a disk
 * that grew (zero-padded) and a chunk read as a shorter slot of a disk that shrank (cut); sub-chunk
 * overlays with a hole sub-chunk and one past a shrunk slot's end; a chunk a format 1 gc set aside (`.gc-<pid>-<hex>`); an open cycle
 * whose refs.log names a chunk nothing else does.
 */
async function buildFormat1(root: string): Promise<Built> {
  const A = randomBytes(CS); const B = randomBytes(CS); const C = randomBytes(8192);
  const D = randomBytes(SS); const E = randomBytes(CS); const F = randomBytes(CS); const G = randomBytes(CS);
  const files: [Buffer, string?][] = [[A], [B], [C], [D], [E, `.gc-${DEAD_PID}-`], [F], [G]];
  for (const [data, prefix] of files) {
    const hex = sha256(data).toString('hex');
    await mkdir(join(root, 'chunks', hex.slice(0, 2)), { recursive: true });
    await writeFile(join(root, 'chunks', hex.slice(0, 2), `${prefix ?? ''}${hex}`), data);
  }
  await mkdir(join(root, 'chunks', 'ab'), { recursive: true });
  await writeFile(join(root, 'chunks', 'ab', '.tmp-999999-1'), 'a dead writer\'s temp file');
  await writeFile(join(root, 'store.json'), JSON.stringify({ version: 1, chunkSize: CS }));
  const name = (b: Buffer | null) => (b ? sha256(b) : ZERO);
  const oldHole = sha256(Buffer.alloc(CS));
  const expected = new Map<string, Buffer>();
  const image = async (id: string, base: string | null, disks: { disk: number; capacity: number; slots: Buffer[]; subs: [number, number, Buffer | null][] | null; bytes: Buffer }[]) => {
    const dir = join(root, 'sources', 'vm', 'images', id);
    await mkdir(dir, { recursive: true });
    for (const d of disks) {
      await writeFile(join(dir, `disk-${d.disk}.idx`), Buffer.concat(d.slots));
      if (d.subs) await writeFile(join(dir, `disk-${d.disk}.sub`), Buffer.concat(d.subs.map(([s, k, b]) => overlayRecord(s, k, name(b)))));
      expected.set(`${id}/${d.disk}`, d.bytes);
    }
    await writeFile(join(dir, 'image.json'), JSON.stringify({
      sourceId: 'vm', imageId: id, seq: Number(id), committedAt: new Date().toISOString(), cycleId: `c${id}`, baseImageId: base,
      disks: disks.map((d) => ({ disk: d.disk, capacity: d.capacity, allocatedBytes: d.capacity, chunkCount: d.slots.length })), meta: {}, chunkSize: CS,
    }));
  };
  // image 1: A (sub 5 a hole), hole, old hole digest, B (sub 2 = D), A, C (short last chunk)
  const cap1 = 5 * CS + 8192;
  const subs1: [number, number, Buffer | null][] = [[0, 5, null], [3, 2, D]];
  await image('1', null, [{ disk: 0, capacity: cap1, slots: [name(A), ZERO, oldHole, name(B), name(A), name(C)], subs: subs1,
    bytes: diskBytes(cap1, [A, null, null, B, A, C], subs1) }]);
  // image 2: disk 0 grew (C now fills a whole slot, zero-padded; E set aside by a dead gc), disk 1 shrank (B cut)
  const cap20 = 7 * CS; const cap21 = 2 * CS + 4096;
  const subs2: [number, number, Buffer | null][] = [[3, 2, D]];
  const slots20 = [name(A), ZERO, oldHole, name(B), name(A), name(C), name(E)];
  await image('2', '1', [
    { disk: 0, capacity: cap20, slots: slots20, subs: subs2, bytes: diskBytes(cap20, [A, null, null, B, A, C, E], subs2) },
    // disk 1 has a sub-chunk past its shrunk last slot (read by no one, but verified)
    { disk: 1, capacity: cap21, slots: [name(A), ZERO, name(B)], subs: [[2, 3, D]], bytes: diskBytes(cap21, [A, null, B], []) },
  ]);
  await writeFile(join(root, 'sources', 'vm', 'last-seq'), '2');
  // an open cycle on image 2 left by a dead receiver: slot 4 = F, slot 6 sub 0 = D; G only in refs.log
  const cdir = join(root, 'sources', 'vm', 'cycles', 'c3');
  await mkdir(cdir, { recursive: true });
  const slots3 = [...slots20]; slots3[4] = name(F);
  await writeFile(join(cdir, 'disk-0.idx'), Buffer.concat(slots3));
  const subs3: [number, number, Buffer | null][] = [[3, 2, D], [6, 0, D]];
  await writeFile(join(cdir, 'disk-0.sub'), Buffer.concat(subs3.map(([s, k, b]) => overlayRecord(s, k, name(b)))));
  await writeFile(join(cdir, 'refs.log'), `${[F, D, G].map((b) => sha256(b).toString('hex')).join('\n')}\n`);
  await writeFile(join(cdir, 'held.log'), `${JSON.stringify({ d: 0, o: 0, l: cap20 })}\n`);
  await writeFile(join(cdir, 'owner'), String(DEAD_PID));
  await writeFile(join(cdir, 'cycle.json'), JSON.stringify({ sourceId: 'vm', cycleId: 'c3', baseImageId: '2', disks: [{ disk: 0, capacity: cap20 }], chunkSize: CS, createdAt: new Date().toISOString() }));
  return { expected, cycle: diskBytes(cap20, [A, null, null, B, F, C, E], subs3), chunks: files.length };
}

/** The store after migration: format 2, no old files, names are tree digests of slot bytes, images read and verify. */
async function checkMigrated(root: string, built: Built): Promise<void> {
  assert.equal((JSON.parse(await readFile(join(root, 'store.json'), 'utf8')) as { version: number }).version, 2);
  assert.equal(await stat(join(root, 'chunks')).catch(() => null), null, 'chunks/ is gone');
  assert.equal(await stat(join(root, 'migrate.map')).catch(() => null), null, 'migrate.map is gone');
  for (const dir of [join(root, 'sources', 'vm', 'images', '1'), join(root, 'sources', 'vm', 'images', '2'), join(root, 'sources', 'vm', 'cycles', 'c3')]) {
    assert.deepEqual((await readdir(dir)).filter((n) => n.includes('.tmp-')), [], `no temp files left in ${dir}`);
  }
  // the old hole digest became a hole
  assert.ok((await readFile(join(root, 'sources', 'vm', 'images', '1', 'disk-0.idx'))).subarray(64, 96).equals(ZERO));
  const packed = await chunkFiles(root);
  // the 7 chunks under their tree digests, and the padded C and cut B
  assert.equal(packed.size, built.chunks + 2);
  const s = await openImageStore(root, { gcGraceMs: 0, repackBelow: 1 });
  try {
    const checkAll = async () => {
      for (const [key, bytes] of built.expected) {
        const [id, disk] = key.split('/') as [string, string];
        assert.equal(sha(await s.readImage('vm', id, Number(disk), 0, bytes.length)), sha(bytes), `image ${key} reads back bit-identical`);
        const slots = Math.ceil(bytes.length / CS);
        const digests = await s.chunkDigests('vm', id, Number(disk), 0, slots);
        for (let i = 0; i < slots; i++) {
          const b = bytes.subarray(i * CS, Math.min((i + 1) * CS, bytes.length));
          const want = b.every((x) => x === 0) ? ZERO : treeDigest(b);
          assert.ok(digests.subarray(i * 32, (i + 1) * 32).equals(want), `image ${key} slot ${i} is named by the tree digest of its bytes`);
        }
      }
      for (const id of ['1', '2']) {
        const v = await s.verify('vm', id);
        assert.equal(v.ok, true, JSON.stringify(v.bad));
      }
    };
    await checkAll();
    // gc marks by the new names: nothing referenced goes
    await s.gc();
    await checkAll();
    // dedup between migrated and new chunks: a new cycle of A and B stores no chunk
    const before = (await s.stats()).chunks;
    const w = await s.beginCycle({ sourceId: 'other', cycleId: 'n1', disks: [{ disk: 0, capacity: CS + 4096 }] });
    await w.writeExtent(0, 0, CS, built.expected.get('1/0')!.subarray(4 * CS, 5 * CS));
    await w.writeExtent(0, CS, 4096, built.expected.get('2/1')!.subarray(2 * CS));
    await w.commit();
    assert.equal((await s.stats()).chunks, before, 'A and the cut B were stored already');
    // the open cycle resumes on the new names and commits what it held
    const c = await s.beginCycle({ sourceId: 'vm', cycleId: 'c3', disks: [{ disk: 0, capacity: built.cycle.length }] });
    const info = await c.commit();
    assert.equal(sha(await s.readImage('vm', info.imageId, 0, 0, built.cycle.length)), sha(built.cycle));
    assert.equal((await s.verify('vm', info.imageId)).ok, true);
  } finally {
    await s.close();
  }
}

test('vmlift image migrate renames every chunk of a hand-built format 1 store to its tree digest: images bit-identical, verify passes, gc and dedup work on the new names', async (t) => {
  const dataDir = await tempDir(t, 'migrate');
  const root = join(dataDir, 'store');
  const built = await buildFormat1(root);
  const r = await migrate(['--data-dir', dataDir, '--json']);
  assert.equal(r.code, 0, r.err);
  const res = JSON.parse(r.out) as Record<string, number>;
  assert.deepEqual([res.from, res.to, res.chunks, res.packs, res.alreadyPacked, res.refitted, res.missing, res.rewrittenFiles],
    [1, 2, built.chunks, 2, 0, 2, 0, 9]);
  await checkMigrated(root, built);
  const again = await migrate(['--data-dir', dataDir, '--json']);
  assert.equal(again.code, 0, again.err);
  assert.match(again.out, /"from": ?2/);
});

for (const kills of [['store:pack-sealed:1'], ['store:migrate:1'], ['store:migrate-rewritten:1'], ['store:migrate-rewritten:4', 'store:migrate-rewritten:2'],
  ['store:migrate-rewritten:9'], ['store:migrate-switched']]) {
  test(`vmlift image migrate killed at ${kills.join(', then ')} and run again gives the same format 2 store`, async (t) => {
    const dataDir = await tempDir(t, 'migrate-kill');
    const root = join(dataDir, 'store');
    const built = await buildFormat1(root);
    for (const at of kills) {
      const k = await migrate(['--data-dir', dataDir], { VMLIFT_TEST_CRASH_AT: at });
      assert.equal(k.signal, 'SIGKILL', `${at}: ${k.err}`);
      const version = (JSON.parse(await readFile(join(root, 'store.json'), 'utf8')) as { version: number }).version;
      assert.equal(version, at === 'store:migrate-switched' ? 2 : 1);
    }
    const r = await migrate(['--data-dir', dataDir, '--json']);
    assert.equal(r.code, 0, r.err);
    await checkMigrated(root, built);
  });
}

test('a chunk the format 1 store had lost keeps its name and verify reports it missing; the rest migrates', async (t) => {
  const dataDir = await tempDir(t, 'migrate-missing');
  const root = join(dataDir, 'store');
  await buildFormat1(root);
  const idx = await readFile(join(root, 'sources', 'vm', 'images', '2', 'disk-0.idx'));
  const lost = idx.toString('hex', 6 * 32, 7 * 32); // E, named by image 2 and the open cycle at slot 6
  const dir = join(root, 'chunks', lost.slice(0, 2));
  for (const n of await readdir(dir)) if (n.endsWith(lost)) await rm(join(dir, n));
  const r = await migrate(['--data-dir', dataDir, '--json']);
  assert.equal(r.code, 0, r.err);
  assert.equal((JSON.parse(r.out) as { missing: number }).missing, 2);
  const s = await openImageStore(root);
  t.after(() => s.close());
  assert.equal((await s.verify('vm', '1')).ok, true);
  const v = await s.verify('vm', '2');
  assert.equal(v.ok, false);
  assert.deepEqual(v.bad.map((b) => [b.disk, b.offset, b.reason]), [[0, 6 * CS, `chunk ${lost} is missing`]]);
});

test('migrate.map keeps the records before a torn or damaged one and cuts the file there', async (t) => {
  const dir = await tempDir(t, 'migrate-map');
  const path = join(dir, 'migrate.map');
  const m = await MigrateMap.open(path);
  const pairs = Array.from({ length: 3 }, () => [randomBytes(32).toString('hex'), randomBytes(32).toString('hex')] as const);
  for (const [o, n] of pairs) m.note(o, n);
  await m.flush();
  await m.close();
  const whole = await readFile(path);
  assert.equal(whole.length, 3 * 72);
  await writeFile(path, Buffer.concat([whole, whole.subarray(0, 40)])); // a record torn mid-append
  const m2 = await MigrateMap.open(path);
  assert.deepEqual([...m2.names], pairs.map(([o, n]) => [o, n]));
  assert.equal((await stat(path)).size, 3 * 72);
  await m2.close();
  const bad = Buffer.from(whole); bad[72 + 10]! ^= 1; // the second record damaged
  await writeFile(path, bad);
  const m3 = await MigrateMap.open(path);
  assert.deepEqual([...m3.names], [[pairs[0]![0], pairs[0]![1]]]);
  await m3.close();
});
