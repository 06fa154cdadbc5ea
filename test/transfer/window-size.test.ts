/**
 * A bandwidth-limited cycle holds only a few seconds of its rate in the send window (window-size.ts):
 * `send` waits instead of taking the whole 64 MiB window of pieces that would only wait for the
 * limit in memory. Raising the limit widens the window again, and the image is exact.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { startTestReceiver, readDisk } from './helpers.ts';
import { windowLimit, MIN_WINDOW_BYTES } from '../../src/transfer/window-size.ts';

const MiB = 1 << 20;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

test('window limit: the full window unlimited; about 4 s of the rate when limited, at least 2 MiB', () => {
  assert.equal(windowLimit(64 * MiB, 0), 64 * MiB);
  assert.equal(windowLimit(64 * MiB, 1), MIN_WINDOW_BYTES);
  assert.equal(windowLimit(64 * MiB, 100), 50_000_000);
  assert.equal(windowLimit(64 * MiB, 10_000), 64 * MiB);
});

test('a limited cycle accepts pieces only as the limit lets them out; unlimited again, the rest goes at once; the image is exact', async (t) => {
  const rx = await startTestReceiver();
  t.after(() => rx.close());
  const s = await rx.sender('win-a', { compression: 0, bandwidthMbps: 4 }); // 0.5 MB/s: a 2 MiB window
  t.after(() => s.close());
  const data = randomBytes(8 * MiB);
  const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: data.length }] });
  let accepted = 0;
  const sends: Promise<void>[] = [];
  for (let off = 0; off < data.length; off += MiB) sends.push(c.send(0, off, data.subarray(off, off + MiB)).then(() => { accepted += MiB; }));
  await new Promise((r) => setTimeout(r, 1500));
  // 1.5 s at 0.5 MB/s lets ~0.75 MB out (plus a quarter second of burst): the 2 MiB window and what left it
  assert.ok(accepted <= 4 * MiB, `${accepted / MiB} MiB accepted after 1.5 s at 4 Mbps (the 64 MiB window took all 8 at once)`);
  assert.ok(accepted >= 2 * MiB, `the window itself is taken at once (${accepted / MiB} MiB)`);
  s.setBandwidthMbps(0);
  await Promise.all(sends);
  const img = await c.commit();
  assert.equal(sha(await readDisk(rx.rx, 'win-a', img.imageId, 0, data.length)), sha(data));
});
