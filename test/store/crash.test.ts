import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openImageStore } from '../../src/store/index.ts';
import { scatter, sha, tempDir, writeAll } from './helpers.ts';

const writer = fileURLToPath(new URL('./crash-writer.ts', import.meta.url));

test('kill -9 of a writer after some flushes: reopen resumes with the flushed ranges held, commit is correct', async (t) => {
  const dir = await tempDir(t, 'crash');
  const root = join(dir, 'store');
  const cs = 64 << 10;
  const cap = 16 << 20;
  const store = await openImageStore(root, { chunkSize: cs });
  // image 1 as the base, then the child writes the incremental cycle c2 with unaligned extents
  const v1 = randomBytes(cap);
  const w1 = await store.beginCycle({ sourceId: 'crash', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  await writeAll(w1, 0, v1, cs);
  await w1.commit();
  const v2 = Buffer.from(v1);
  scatter(v2, 300);
  randomBytes(3 << 20).copy(v2, 5 << 20);
  const srcFile = join(dir, 'v2.raw');
  await writeFile(srcFile, v2);

  const extent = 100_000; // not chunk-aligned: exercises partial chunks and the write-back cache
  const child = spawn(process.execPath, ['--import', 'tsx', writer, root, srcFile, String(extent), '8', '150'], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  let lastFlushed = 0;
  await new Promise<void>((resolve, reject) => {
    let flushes = 0;
    let buf = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let i; (i = buf.indexOf('\n')) >= 0;) {
        const line = buf.slice(0, i); buf = buf.slice(i + 1);
        const m = /^flushed (\d+)$/.exec(line);
        if (m) { lastFlushed = Number(m[1]); if (++flushes === 3) { child.kill('SIGKILL'); resolve(); } }
      }
    });
    child.on('exit', () => resolve());
    child.on('error', reject);
  });
  await new Promise((r) => child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r));
  assert.equal(child.signalCode, 'SIGKILL');
  assert.ok(lastFlushed >= 3 * 8 * extent);

  assert.deepEqual(await store.openCycles('crash'), ['c2']);
  const w2 = await store.beginCycle({ sourceId: 'crash', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
  assert.equal(w2.baseImageId, '1');
  const held = await w2.held();
  assert.equal(held.length, 1);
  const r = held[0]!.ranges;
  assert.equal(r.length, 1, `one contiguous range expected, got ${JSON.stringify(r)}`);
  assert.equal(r[0]!.offset, 0);
  assert.ok(r[0]!.length >= lastFlushed, `held ${r[0]!.length} >= last reported flush ${lastFlushed}`);
  assert.ok(r[0]!.length < cap, 'the child was killed before the end');
  // the image content of the held part is what was sent (check through a commit after resending the rest)
  const resumeAt = r[0]!.length;
  for (let o = resumeAt; o < cap; o += extent) {
    const len = Math.min(extent, cap - o);
    await w2.writeExtent(0, o, len, v2.subarray(o, o + len));
  }
  const img = await w2.commit({ expected: [{ disk: 0, ranges: [{ offset: 0, length: cap }] }] });
  assert.equal(img.imageId, '2');
  assert.equal(sha(await store.readImage('crash', '2', 0, 0, cap)), sha(v2));
  assert.equal(sha(await store.readImage('crash', '1', 0, 0, cap)), sha(v1));
  assert.equal((await store.verify('crash', '2')).ok, true);
  const out = join(dir, 'out.raw');
  await store.export('crash', '2', 0, 'raw', out);
  assert.equal(sha(await readFile(out)), sha(v2));
});

test('a cycle open in another live process cannot be taken over', async (t) => {
  const dir = await tempDir(t, 'crash');
  const root = join(dir, 'store');
  const cap = 4 << 20;
  const store = await openImageStore(root, { chunkSize: 64 << 10 });
  const srcFile = join(dir, 'v.raw');
  await writeFile(srcFile, randomBytes(cap));
  const child = spawn(process.execPath, ['--import', 'tsx', writer, root, srcFile, String(1 << 20), '1', '0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  await new Promise<void>((resolve) => child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('done')) resolve(); }));
  await assert.rejects(store.beginCycle({ sourceId: 'crash', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] }), /being written by process/);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  const w = await store.beginCycle({ sourceId: 'crash', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
  assert.deepEqual((await w.held())[0]!.ranges, [{ offset: 0, length: cap }]);
  const img = await w.commit({ expected: [{ disk: 0, ranges: [{ offset: 0, length: cap }] }] });
  assert.equal(sha(await store.readImage('crash', img.imageId, 0, 0, cap)), sha(await readFile(srcFile)));
});

test('torn last lines of the cycle journals (crash mid-append) are ignored and do not swallow later records', async (t) => {
  const dir = await tempDir(t, 'crash');
  const root = join(dir, 'store');
  const cap = 1 << 20;
  const store = await openImageStore(root, { chunkSize: 64 << 10 });
  const v = randomBytes(cap);
  const w = await store.beginCycle({ sourceId: 'crash', cycleId: 'torn', disks: [{ disk: 0, capacity: cap }] });
  await w.writeExtent(0, 0, 65536, v.subarray(0, 65536));
  await w.flush();
  await store.close(); // leaves the cycle open on disk, as a killed process would
  const { appendFile } = await import('node:fs/promises');
  const cdir = join(root, 'sources', 'crash', 'cycles', 'torn');
  await appendFile(join(cdir, 'held.log'), '{"d":0,"o":65536,"l":');
  await appendFile(join(cdir, 'refs.log'), 'abc123');
  const again = await openImageStore(root);
  const w2 = await again.beginCycle({ sourceId: 'crash', cycleId: 'torn', disks: [{ disk: 0, capacity: cap }] });
  assert.deepEqual((await w2.held())[0]!.ranges, [{ offset: 0, length: 65536 }]);
  await w2.writeExtent(0, 65536, cap - 65536, v.subarray(65536));
  await w2.flush();
  await again.close();
  const third = await openImageStore(root);
  const w3 = await third.beginCycle({ sourceId: 'crash', cycleId: 'torn', disks: [{ disk: 0, capacity: cap }] });
  assert.deepEqual((await w3.held())[0]!.ranges, [{ offset: 0, length: cap }], 'the record after the torn line survives');
  const img = await w3.commit({ expected: [{ disk: 0, ranges: [{ offset: 0, length: cap }] }] });
  assert.equal(sha(await third.readImage('crash', img.imageId, 0, 0, cap)), sha(v));
  const imageJson = await readFile(join(root, "sources", "crash", "images", img.imageId, "image.json"), "utf8");
  assert.match(imageJson, /"cycleId": "torn"/);
});
