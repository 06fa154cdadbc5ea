/**
 * The agent's per-window block bookkeeping in runs and in one native call (no JavaScript per 4 KiB
 * block) gives what the block-by-block form gives: the old manifest's digests (a file shorter than
 * the disk, a short last block), the new records, and which blocks changed.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BLOCK_SIZE, DIGEST_SIZE, ManifestReader, zeroDigest } from '../../src/agent/manifest.ts';
import { nativeDigest } from '../../src/util/native-digest.ts';

const dir = await mkdtemp(join(tmpdir(), 'vmlift-window-states-'));
after(() => rm(dir, { recursive: true, force: true }));

test('ManifestReader.get returns each block\'s old digest, zero digests past the file, the short last block\'s own', async () => {
  const capacity = 700 * BLOCK_SIZE + 512; // 701 blocks, the last 512 bytes
  const fileBlocks = 300;
  const records = randomBytes(fileBlocks * DIGEST_SIZE);
  const path = join(dir, 'old.bin');
  await writeFile(path, records);
  const expected = (b: number): Buffer => (b < fileBlocks ? records.subarray(b * DIGEST_SIZE, (b + 1) * DIGEST_SIZE)
    : zeroDigest(b === 700 ? 512 : BLOCK_SIZE));
  const r = await ManifestReader.open(path, capacity);
  try {
    // windows of uneven sizes that straddle the end of the file and reach the short last block
    let b = 0;
    for (const n of [1, 255, 40, 100, 256, 49]) {
      const got = await r.get(b, n);
      assert.equal(got.length, n * DIGEST_SIZE);
      for (let i = 0; i < n; i++) assert.deepEqual(got.subarray(i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE), expected(b + i), `block ${b + i}`);
      b += n;
    }
    assert.equal(b, 701);
  } finally {
    await r.close();
  }
  const none = await ManifestReader.open(null, capacity);
  const all = await none.get(0, 701);
  assert.deepEqual(all.subarray(0, DIGEST_SIZE), zeroDigest());
  assert.deepEqual(all.subarray(700 * DIGEST_SIZE), zeroDigest(512));
});

test('the native window comparison gives the new records and the changed blocks', { skip: nativeDigest() ? false : 'native digester not built (bash native/build.sh)' }, () => {
  const n = 256;
  const digests = Buffer.alloc(n * 32);
  const old = Buffer.alloc(n * DIGEST_SIZE);
  for (let i = 0; i < n; i++) {
    createHash('sha256').update(`block ${i}`).digest().copy(digests, i * 32);
    // every third block unchanged; one differs only in its 16th byte (the last one the manifest keeps)
    digests.copy(old, i * DIGEST_SIZE, i * 32, i * 32 + DIGEST_SIZE);
    if (i % 3 !== 0) old[i * DIGEST_SIZE + (i === 1 ? 15 : 0)]! ^= 0xff;
  }
  digests[2 * 32 + 20]! ^= 0xff; // beyond the kept 16 bytes: not a change
  const fresh = Buffer.alloc(n * DIGEST_SIZE);
  const changed = new Uint8Array(n);
  const count = nativeDigest()!.compareBlocks(digests, n, 32, DIGEST_SIZE, old, fresh, changed);
  for (let i = 0; i < n; i++) {
    assert.deepEqual(fresh.subarray(i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE), digests.subarray(i * 32, i * 32 + DIGEST_SIZE));
    assert.equal(changed[i], i % 3 !== 0 ? 1 : 0, `block ${i}`);
  }
  assert.equal(count, n - Math.ceil(n / 3));
  assert.throws(() => nativeDigest()!.compareBlocks(digests, n + 1, 32, DIGEST_SIZE, old, fresh, changed), RangeError);
});
