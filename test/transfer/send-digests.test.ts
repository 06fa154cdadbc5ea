// A sender given the digests of its data's 1 MiB pieces (as the engine computes them once for its
// digest tree) sends them as the frames' digests, all-zero pieces as markers; a digest that does not
// match what is sent is caught by the receiver.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { startTestReceiver, sha256, readDisk, type TestRx } from './helpers.ts';
import { pieceDigests } from '../../src/transfer/digest-tree.ts';

const MiB = 1 << 20;
let t: TestRx;
before(async () => { t = await startTestReceiver(); });
after(async () => { await t.close(); });

test('per-piece digests go out as the frames\' digests; zero pieces as markers; the image is the data', async () => {
  const disk = randomBytes(8 * MiB);
  disk.fill(0, 3 * MiB, 4 * MiB);
  const s = await t.sender('sd-a', { compression: 0 });
  const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: disk.length }] });
  // unaligned reads of 2 MiB, as a transport might do them
  for (let off = 0; off < disk.length;) {
    const end = Math.min(disk.length, off === 0 ? 2 * MiB - 4096 : off + 2 * MiB);
    const data = Buffer.from(disk.subarray(off, end));
    await c.send(0, off, data, undefined, { digest: await pieceDigests(off, data) });
    off = end;
  }
  const img = await c.commit();
  assert.equal(c.stats().zeroBytes, MiB, 'the all-zero piece went as a marker');
  assert.equal(sha256(await readDisk(t.rx, 'sd-a', img.imageId, 0, disk.length)), sha256(disk));
  await s.close();
});

test('a wrong piece digest is refused by the receiver (BAD_DIGEST), not stored', async () => {
  const data = randomBytes(2 * MiB);
  const s = await t.sender('sd-b', { compression: 0 });
  const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: data.length }] });
  const digest = await pieceDigests(0, data);
  digest[40] ^= 1; // the second piece's
  await c.send(0, 0, data, undefined, { digest }).catch(() => undefined);
  await assert.rejects(c.flush(), /digest mismatch/);
  assert.deepEqual(await s.listImages(), []);
  await s.close();
});
