/**
 * A pack file shorter than its index (a disk fault, a bad copy of the store folder): every read of
 * the missing bytes fails with PACK_TRUNCATED. An image read, an export (in process and through the
 * CLI) and a verify never turn them into zeros, and an export leaves no output file behind.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, stat, truncate } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { StoreError } from '../../src/store/types.ts';
import { chunkLocation, packIndexes, run, storeWithImage } from './helpers.ts';

const CHUNK = 64 << 10;
const CAP = 2 << 20;

/** A store with one image whose pack lost the last 3000 bytes: the disk offset of the chunk cut short. */
async function truncatedStore(t: Parameters<typeof storeWithImage>[0], name: string) {
  const s = await storeWithImage(t, { chunkSize: CHUNK, capacity: CAP, name });
  t.after(() => s.store.close());
  const packs = await packIndexes(s.root);
  assert.equal(packs.size, 1, 'one cycle of 2 MiB: one pack');
  const [id, entries] = [...packs][0]!;
  const last = entries.reduce((a, b) => (b.offset > a.offset ? b : a));
  const loc = await chunkLocation(s.root, last.hex);
  await truncate(loc.path, loc.offset + loc.length - 3000);
  let diskOffset = -1;
  for (let i = 0; i < CAP / CHUNK; i++) {
    if ((await s.store.chunkDigests('vm', '1', 0, i, 1)).toString('hex') === last.hex) diskOffset = i * CHUNK;
  }
  assert.ok(diskOffset >= 0, 'the cut chunk belongs to the image');
  return { ...s, id, diskOffset, packEnd: loc.offset + loc.length };
}

function isTruncated(id: string) {
  return (e: unknown) => {
    assert.ok(e instanceof StoreError, String(e));
    assert.equal(e.code, 'PACK_TRUNCATED');
    assert.match(e.message, new RegExp(`pack ${id} is \\d+ bytes but its index names chunks up to byte \\d+`));
    assert.match(String(e.fix), /vmlift image verify/);
    return true;
  };
}

test('an image read over a truncated pack fails with PACK_TRUNCATED; the chunks before it still read', async (t) => {
  const { store, v1, id, diskOffset } = await truncatedStore(t, 'trunc-read');
  await assert.rejects(store.readImage('vm', '1', 0, diskOffset, CHUNK), isTruncated(id));
  await assert.rejects(store.readImage('vm', '1', 0, diskOffset + CHUNK - 100, 100), isTruncated(id), 'the last 100 bytes of the chunk are past the cut');
  await assert.rejects(store.readImage('vm', '1', 0, diskOffset + 100, 4096), isTruncated(id), 'a chunk is read whole');
  const other = diskOffset === 0 ? CHUNK : 0;
  const intact = await store.readImage('vm', '1', 0, other, CHUNK);
  assert.ok(intact.equals(v1.subarray(other, other + CHUNK)), 'a chunk the pack still holds reads exactly');
});

test('an export over a truncated pack fails with PACK_TRUNCATED and leaves no output file; verify names the chunk', async (t) => {
  const { dir, store, id, diskOffset } = await truncatedStore(t, 'trunc-export');
  for (const format of ['raw', 'qcow2'] as const) {
    const out = join(dir, `out.${format}`);
    await assert.rejects(store.export('vm', '1', 0, format, out), isTruncated(id), format);
    assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith(basename(out))), [], `${format}: no output, no partial file`);
  }
  const v = await store.verify('vm', '1');
  assert.equal(v.ok, false);
  assert.deepEqual(v.bad.map((b) => b.offset), [diskOffset]);
  assert.match(v.bad[0]!.reason, new RegExp(`cannot be read: pack ${id} is \\d+ bytes`));
});

test('vmlift image export over a truncated pack exits 1 naming the pack and the fix; no output file', async (t) => {
  const { dir, root, store, id } = await truncatedStore(t, 'trunc-cli');
  await store.close();
  const out = join(dir, 'cli.raw');
  const r = await run('bin/vmlift', ['image', 'export', '--data-dir', dirname(root), '--source', 'vm', '--image', '1', '--disk', '0', '--format', 'raw', '--output', out]);
  assert.equal(r.code, 1, r.err);
  assert.match(r.err, new RegExp(`pack ${id} is \\d+ bytes but its index names chunks up to byte \\d+`));
  assert.match(r.err, /fix: run `vmlift image verify`/);
  await assert.rejects(stat(out), /ENOENT/);
});
