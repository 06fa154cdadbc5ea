import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { appendFile, open, readFile, readdir, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { treeDigest as chunkName } from '../../src/util/tree-digest.ts';
import { CycleJournals, INDEX_PAGE_SLOTS, WorkingIndex, parseHeld } from '../../src/store/journals.ts';
import { bareCycle, bareStore } from './cycle-parts.ts';
import { tempDir } from './helpers.ts';

const CS = 64 << 10;
const SUB = CS / 16;
const disks = [{ disk: 0, capacity: 1 << 20 }];

/** Every file of the cycle folder but the owner, by name. */
async function folder(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const n of (await readdir(dir)).sort()) if (n !== 'owner') out[n] = (await readFile(join(dir, n))).toString('hex');
  return out;
}

test('the chunks come first: when a chunk cannot be made durable, the flush writes no overlay record, index slot or held range', async (t) => {
  const { root, layout } = await bareStore(t, CS);
  const c = await bareCycle(t, { layout, chunkSize: CS, disks });
  const a = randomBytes(CS);
  await c.write(0, 0, a);
  await c.write(0, CS + SUB, randomBytes(SUB)); // a whole sub-chunk: an overlay record
  await c.flush();
  const before = await folder(c.dir);
  const refsBefore = before['refs.log'];
  await c.write(0, 2 * CS, randomBytes(CS));
  await c.write(0, 3 * CS, randomBytes(SUB));
  // the new chunks are in a pack not sealed yet: make sealing it fail (its index cannot be written)
  const unsealed = (await readdir(join(root, 'packs'))).filter((n) => n.endsWith('.pack') && !existsSync(join(root, 'packs', n.replace(/\.pack$/, '.idx'))));
  assert.equal(unsealed.length, 1);
  await rename(join(root, 'packs'), join(root, 'packs.away'));
  await writeFile(join(root, 'packs'), '');
  await assert.rejects(c.flush(), /ENOTDIR/);
  const after = await folder(c.dir);
  assert.notEqual(after['refs.log'], refsBefore, 'refs.log names chunks before they exist');
  delete before['refs.log']; delete after['refs.log'];
  assert.deepEqual(after, before, 'held.log, disk-0.idx and disk-0.sub are as the last good flush left them');
  assert.deepEqual(c.journals.held()[0]!.ranges, [{ offset: 0, length: CS }, { offset: CS + SUB, length: SUB }]);
});

test('a flush claims the ranges noted before it began: what settle adds to the index is written, a range noted during it waits for the next flush', async (t) => {
  const { layout } = await bareStore(t, CS);
  const c = await bareCycle(t, { layout, chunkSize: CS, disks });
  const digest = chunkName(Buffer.from('slot five'));
  c.disk().noteWritten({ offset: 0, length: 4096 });
  await c.journals.flush(c.chunks, async () => {
    c.disk().index.set(5, digest);
    c.disk().noteWritten({ offset: 8192, length: 4096 });
  });
  assert.deepEqual(c.journals.held()[0]!.ranges, [{ offset: 0, length: 4096 }]);
  assert.deepEqual(parseHeld(await readFile(join(c.dir, 'held.log'), 'utf8')).get(0), [{ offset: 0, length: 4096 }]);
  assert.deepEqual((await readFile(join(c.dir, 'disk-0.idx'))).subarray(5 * 32, 6 * 32), digest);
  await c.journals.flush(c.chunks, async () => {});
  assert.deepEqual(c.journals.held()[0]!.ranges, [{ offset: 0, length: 4096 }, { offset: 8192, length: 4096 }]);
});

test('reopened after a crash mid-append, the journals read back what was flushed; the torn lines are ended, and later lines are read', async (t) => {
  const { layout } = await bareStore(t, CS);
  const c = await bareCycle(t, { layout, chunkSize: CS, disks });
  const a = randomBytes(CS);
  await c.write(0, 0, a);
  await c.write(0, CS + 100, randomBytes(5000)); // partial: two sub-chunks, through the cache
  await c.flush();
  const overlay = c.disk().overlay.overlay;
  assert.deepEqual([...overlay.get(1)!.keys()], [0, 1]);
  // the crash: half a held.log line, half a refs.log line, half an overlay record
  await appendFile(join(c.dir, 'held.log'), '{"d":0,"o":65536,"l":');
  await appendFile(join(c.dir, 'refs.log'), 'abc123');
  await appendFile(join(c.dir, 'disk-0.sub'), randomBytes(20));

  const j2 = await CycleJournals.open(c.dir, c.rec);
  t.after(() => j2.close());
  assert.deepEqual(j2.held(), [{ disk: 0, ranges: [{ offset: 0, length: CS }, { offset: CS + 100, length: 5000 }] }]);
  assert.deepEqual(j2.disks.get(0)!.overlay.overlay, overlay);
  assert.deepEqual(await j2.disks.get(0)!.index.get(0), chunkName(a));
  assert.equal(await j2.disks.get(0)!.index.get(2), null);
  const refs = (await readFile(join(c.dir, 'refs.log'), 'utf8')).split('\n');
  assert.ok(refs.includes('abc123'), 'the torn refs line was ended');

  assert.equal((await stat(join(c.dir, 'disk-0.sub'))).size % 38, 0, 'the torn overlay record was cut off');

  const b = randomBytes(CS);
  j2.disks.get(0)!.index.set(2, chunkName(b));
  j2.disks.get(0)!.noteWritten({ offset: 2 * CS, length: CS });
  // a record appended after the torn one must read back as written, not shifted by the torn bytes
  const sub = chunkName(randomBytes(CS / 16));
  j2.disks.get(0)!.overlay.setSub(3, 7, sub);
  await j2.flush(c.chunks, async () => {});
  const j3 = await CycleJournals.open(c.dir, c.rec);
  t.after(() => j3.close());
  assert.deepEqual(j3.held()[0]!.ranges, [{ offset: 0, length: CS }, { offset: CS + 100, length: 5000 }, { offset: 2 * CS, length: CS }]);
  assert.deepEqual(await j3.disks.get(0)!.index.get(2), chunkName(b));
  assert.deepEqual(j3.disks.get(0)!.overlay.overlay.get(3), new Map([[7, sub]]));
  assert.deepEqual(j3.disks.get(0)!.overlay.overlay.get(1), overlay.get(1));
});

test('the working index answers from the file as last written: a page read before a flush is not used after it', async (t) => {
  const dir = await tempDir(t, 'index');
  const path = join(dir, 'disk-0.idx');
  const slots = INDEX_PAGE_SLOTS * 2 + 5; // a short last page
  const old = randomBytes(slots * 32);
  await writeFile(path, old);
  const fh = await open(path, 'r+');
  t.after(() => fh.close());
  const idx = new WorkingIndex(fh, slots);
  assert.ok((await idx.get(5))!.equals(old.subarray(5 * 32, 6 * 32)));
  assert.ok((await idx.get(slots - 1))!.equals(old.subarray((slots - 1) * 32)));
  assert.equal(await idx.get(slots), null, 'past the file: a hole');
  const five = randomBytes(32);
  idx.set(5, five);
  idx.set(6, null);
  assert.ok((await idx.get(5))!.equals(five), 'a change not yet written');
  const changes = idx.changes();
  await idx.write(changes);
  idx.written(changes);
  assert.ok((await idx.get(5))!.equals(five), 'the written digest, not the page read before the flush');
  assert.equal(await idx.get(6), null, 'a written hole');
  assert.ok((await idx.get(INDEX_PAGE_SLOTS + 1))!.equals(old.subarray((INDEX_PAGE_SLOTS + 1) * 32, (INDEX_PAGE_SLOTS + 2) * 32)), 'another page');
  const file = await readFile(path);
  assert.ok(file.subarray(5 * 32, 6 * 32).equals(five));
  assert.ok(file.subarray(6 * 32, 7 * 32).equals(Buffer.alloc(32)));
});
