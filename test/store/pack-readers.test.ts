/**
 * Read handles of sealed packs (src/store/pack-readers.ts): one handle per pack while reads keep
 * coming, bytes exact (PACK_TRUNCATED past the end of the file, never zeros), and no handle left once the pack is forgotten or
 * idle, so a pack gc deleted frees its space.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readlinkSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PackReaders } from '../../src/store/pack-readers.ts';

/** Open descriptors of this process that point at `path` (deleted or not). */
function handlesOn(path: string): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try { if (readlinkSync(`/proc/self/fd/${fd}`).replace(/ \(deleted\)$/, '') === path) n++; } catch { /* closed meanwhile */ }
  }
  return n;
}

test('pack readers: exact bytes through one kept handle; a dropped or idle handle is closed, so a deleted pack frees its space', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-pack-readers-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const a = join(dir, 'a.pack'); const b = join(dir, 'b.pack');
  const data = randomBytes(256 * 1024);
  writeFileSync(a, data); writeFileSync(b, data);
  const readers = new PackReaders();
  t.after(() => readers.closeAll());

  const reads = await Promise.all(Array.from({ length: 50 }, (_, k) => readers.read(a, k * 4096, 8192)));
  reads.forEach((r, k) => assert.ok(r.equals(data.subarray(k * 4096, k * 4096 + 8192)), `read ${k}`));
  const tail = await readers.read(a, data.length - 100, 100);
  assert.ok(tail.equals(data.subarray(-100)), 'the last bytes');
  await assert.rejects(readers.read(a, data.length - 100, 300), (e: Error & { code?: string }) =>
    e.code === 'PACK_TRUNCATED' && /pack a is 262144 bytes but its index names chunks up to byte 262344/.test(e.message), 'past the end: damaged, not zeros');
  assert.equal(handlesOn(a), 1, '52 reads, one handle');

  // gc deleted pack a: once the index forgets it, its handle goes and the space with it
  unlinkSync(a);
  readers.drop(a);
  await sleep(50);
  assert.equal(handlesOn(a), 0, 'the dropped handle is closed');
  await assert.rejects(readers.read(a, 0, 10), /ENOENT/, 'a pack gone is not read from a stale handle once dropped');

  // an idle handle closes by itself
  await readers.read(b, 0, 10);
  assert.equal(handlesOn(b), 1);
  await sleep(2300);
  assert.equal(handlesOn(b), 0, 'idle for more than a second: closed');
});

test('a read into a reused buffer overwrites it with the bytes read, never what the buffer held; past the end of the file it fails', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-readers-into-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'p.pack');
  const content = randomBytes(10000);
  writeFileSync(path, content);
  const readers = new PackReaders();
  t.after(() => readers.closeAll());
  const into = Buffer.alloc(8192, 0xee);
  const a = await readers.read(path, 100, 8192, into);
  assert.equal(a.buffer, into.buffer, 'read into the given buffer');
  assert.ok(a.equals(content.subarray(100, 100 + 8192)));
  into.fill(0xee);
  await assert.rejects(readers.read(path, 6000, 8192, into), /pack p is 10000 bytes but its index names chunks up to byte 14192/);
  const b = await readers.read(path, 10000 - 8192, 8192, into);
  assert.ok(b.equals(content.subarray(10000 - 8192)), 'up to the very end');
  const c = await readers.read(path, 1000, 4096, into);
  assert.equal(c.length, 4096, 'a shorter read: a view of the buffer\'s start');
  assert.ok(c.equals(content.subarray(1000, 5096)));
});
