/**
 * Issue 15, the receiver's free space and dedup ratio: `GET /v1/store` on the control port over TLS,
 * with the receiver's data folder on a real small filesystem (a tmpfs), so free space is exact. It
 * refuses a peer without a credential; two images of the same data (two sources) give a ratio of 2
 * while the stored bytes stay those of one copy; free space is statfs of the data folder and follows
 * a file written beside it; the totals are cached between changes and recomputed after a commit and a
 * delete (and, for changes it was not told of, once they are older than the maximum age).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { statfsSync, writeFileSync, rmSync, fsyncSync, openSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startReceiver, type RunningReceiver } from '../../src/receiver/server.ts';
import { Sender } from '../../src/transfer/sender.ts';
import { ControlClient, RemoteError } from '../../src/transfer/control-client.ts';
import { StoreFigures } from '../../src/receiver/store-figures.ts';
import type { StoreFiguresResponse } from '../../src/transfer/contract.ts';
import { sendDisk } from '../transfer/helpers.ts';
import { canMount, smallFs, type SmallFs } from '../util/small-fs.ts';

const MiB = 1 << 20;
const skip = canMount() ? false : 'needs root to mount a tmpfs';

let fs: SmallFs;
let rx: RunningReceiver;
let dataDir: string;
let code: string;

before(async () => {
  if (skip) return;
  fs = smallFs(null, 128);
  dataDir = join(fs.dir, 'rx');
  rx = await startReceiver({ dataDir, controlPort: 0, dataPort: 0, listen: '127.0.0.1' });
  code = rx.createdCode!.code;
});
after(async () => { await rx?.close(); fs?.cleanup(); });

const connect = (sourceId: string) => Sender.connect({
  receiver: `127.0.0.1:${rx.controlPort}`, fingerprint: rx.fingerprint, credentialFile: join(fs.dir, `${sourceId}.cred`),
  activationCode: code, sourceId, compression: 3, bandwidthMbps: 0, checksum: true,
});

async function imageOf(sourceId: string, data: Buffer): Promise<void> {
  const s = await connect(sourceId);
  try {
    const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: data.length }] });
    await sendDisk(c, 0, data);
    await c.commit();
  } finally { await s.close(); }
}

const freeOf = (dir: string): number => { const s = statfsSync(dir); return s.bavail * s.bsize; };

test('GET /v1/store: refused without a credential; dedup ratio 2 for two images of the same data, stored bytes not doubled; free space is statfs of the data folder', { skip, timeout: 120_000 }, async () => {
  const anon = new ControlClient({ host: '127.0.0.1', port: rx.controlPort, fingerprint: rx.fingerprint });
  await assert.rejects(anon.storeFigures(), (e: unknown) => e instanceof RemoteError && e.status === 401 && e.code === 'AUTH', 'no credential: refused');
  const wrong = new ControlClient({ host: '127.0.0.1', port: rx.controlPort, fingerprint: rx.fingerprint }, { sourceId: 'nobody', credential: 'not-a-credential' });
  await assert.rejects(wrong.storeFigures(), (e: unknown) => e instanceof RemoteError && e.status === 401 && e.code === 'AUTH', 'a wrong credential: refused');

  const data = randomBytes(12 * MiB);
  await imageOf('fig-a', data);
  const viewer = await connect('fig-a');
  const ask = (): Promise<StoreFiguresResponse> => viewer.control.storeFigures();
  try {
    const one = await ask();
    assert.equal(one.images, 1);
    assert.equal(one.logicalBytes, data.length, 'one image of 12 MiB of data (no holes)');
    assert.equal(one.distinctBytes, data.length, 'stored once: chunk data is kept as written');
    assert.equal(one.dedupRatio, 1);

    await imageOf('fig-b', data);
    const two = await ask();
    assert.equal(two.images, 2, 'the commit made the cached totals stale');
    assert.equal(two.sources, 2);
    assert.equal(two.logicalBytes, 2 * data.length, 'each image counts in full');
    assert.equal(two.distinctBytes, one.distinctBytes, 'the second image of the same data stored nothing new');
    assert.ok(two.storedBytes < 1.05 * one.storedBytes, `stored bytes did not double (${one.storedBytes} → ${two.storedBytes})`);
    assert.ok(Math.abs(two.dedupRatio - 2) < 0.01, `dedup ratio ${two.dedupRatio}`);

    // free space is statfs of the data folder, read at each request; a 5 MiB file beside it takes exactly 5 MiB
    assert.equal(two.freeBytes, freeOf(dataDir));
    assert.equal(two.totalBytes, statfsSync(dataDir).blocks * statfsSync(dataDir).bsize);
    assert.equal(two.totalBytes, 128 * MiB, 'the tmpfs of 128 MiB');
    const filler = join(fs.dir, 'filler-5m');
    writeFileSync(filler, randomBytes(5 * MiB));
    const fd = openSync(filler, 'r'); fsyncSync(fd); closeSync(fd);
    const three = await ask();
    assert.equal(three.freeBytes, two.freeBytes - 5 * MiB, 'free space follows the filesystem at once');
    assert.equal(three.computedAt, two.computedAt, 'the store totals came from the cache: nothing changed in the store');
    rmSync(filler);
    assert.equal((await ask()).freeBytes, two.freeBytes);

    // deleting an image through the control API makes the totals stale too
    await (await connect('fig-b')).control.deleteImage('1');
    const four = await ask();
    assert.equal(four.images, 1);
    assert.equal(four.logicalBytes, data.length);
    assert.equal(four.distinctBytes, data.length, 'the chunks stay: fig-a still references them');
  } finally { await viewer.close(); }
});

test('StoreFigures: concurrent requests share one computation; a change it was not told of shows once the totals are older than the maximum age', { skip, timeout: 60_000 }, async () => {
  const figures = new StoreFigures(rx.store, dataDir, 300);
  const [a, b] = await Promise.all([figures.get(), figures.get()]);
  assert.equal(a.computedAt, b.computedAt, 'one computation for both');
  const before = a.images;
  // an image removed behind its back (as `vmlift image rm` in another process would)
  const [victim] = await rx.store.listImages('fig-a');
  await rx.store.removeImage('fig-a', victim!.imageId);
  assert.equal((await figures.get()).images, before, 'still the cached totals');
  await sleep(350);
  assert.equal((await figures.get()).images, before - 1, 'recomputed once older than the maximum age');
  figures.changed();
  const c = await figures.get();
  assert.notEqual(c.computedAt, undefined);
  assert.ok(c.computeMs >= 0);
});
