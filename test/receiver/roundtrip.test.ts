import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { startTestReceiver, makeDisk, sendDisk, sha256, readDisk, type TestRx } from '../transfer/helpers.ts';
import { RemoteError } from '../../src/transfer/control-client.ts';
import { treeRootOf } from '../../src/transfer/digest-tree.ts';

let t: TestRx;
before(async () => { t = await startTestReceiver(); });
after(async () => { await t.close(); });

const MiB = 1 << 20;

test('a cycle round trip: export has the source bytes; a second cycle changes only what was sent; digests match', async () => {
  const d0 = makeDisk(24 * MiB, 7);
  const d1 = makeDisk(8 * MiB + 4096 * 3, 9); // capacity not a multiple of the chunk size
  const s = await t.sender('rt-a');
  const c1 = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: d0.length }, { disk: 1, capacity: d1.length }] });
  assert.equal(c1.baseImageId, null);
  await sendDisk(c1, 0, d0, 3 * MiB + 4096); // odd sizes: the sender re-cuts at 1 MiB boundaries
  await sendDisk(c1, 1, d1, 512 * 1024);
  const img1 = await c1.commit({ meta: { note: 'first' } });
  assert.equal(img1.imageId, '1');
  assert.deepEqual(img1.meta, { note: 'first' });

  const out = join(t.dir, 'd0.raw');
  await t.rx.store.export('rt-a', '1', 0, 'raw', out);
  assert.equal(sha256(await readFile(out)), sha256(d0));
  assert.equal(sha256(await readDisk(t.rx, 'rt-a', '1', 1, d1.length)), sha256(d1));
  const st1 = c1.stats();
  assert.ok(st1.zeroBytes > 0, 'holes travel as zero markers');
  // The governor may send pieces raw while the codec, not the link, is what the sender waits for
  // (a loaded machine): those bytes are not expected to shrink, the rest is (zeros to markers, text compressed).
  const raw = st1.uncompressedForSpeedBytes;
  assert.ok(st1.wireBytes < raw + (st1.payloadBytes - raw) * 0.8,
    `compression and zero markers shrink the wire (${st1.wireBytes} vs ${st1.payloadBytes}, ${raw} sent raw for speed)`);
  assert.ok(st1.wireBytes < st1.payloadBytes - st1.zeroBytes / 2, 'zero markers shrink the wire whatever the governor chose');

  // cycle 2: change a few scattered 4 KiB blocks of disk 0
  const d0b = Buffer.from(d0);
  const c2 = await s.beginCycle({ cycleId: 'c2', disks: [{ disk: 0, capacity: d0.length }, { disk: 1, capacity: d1.length }] });
  assert.equal(c2.baseImageId, '1');
  let changed = 0;
  for (const off of [0, 5 * MiB + 8192, 13 * MiB, 24 * MiB - 4096]) {
    const blk = createHash('sha256').update(String(off)).digest();
    for (let i = 0; i < 4096; i += 32) blk.copy(d0b, off + i);
    await c2.send(0, off, d0b.subarray(off, off + 4096));
    changed += 4096;
  }
  const img2 = await c2.commit();
  assert.equal(img2.baseImageId, '1');
  assert.ok(c2.stats().payloadBytes === changed);
  assert.equal(sha256(await readDisk(t.rx, 'rt-a', '2', 0, d0.length)), sha256(d0b));
  assert.equal(sha256(await readDisk(t.rx, 'rt-a', '2', 1, d1.length)), sha256(d1));
  assert.equal(sha256(await readDisk(t.rx, 'rt-a', '1', 0, d0.length)), sha256(d0), 'image 1 keeps the old content');

  const images = await s.listImages();
  assert.deepEqual(images.map((i) => i.imageId), ['1', '2']);

  // block digests from the receiver equal the source's, for the store's chunk size (index fast path) and a smaller block
  for (const bs of [MiB, 64 * 1024]) {
    const got: string[] = [];
    for await (const d of s.blockDigests('2', 1, bs)) got.push(d.toString('hex'));
    const want: string[] = [];
    for (let off = 0; off < d1.length; off += bs) want.push(createHash('sha256').update(d1.subarray(off, Math.min(d1.length, off + bs))).digest().subarray(0, 16).toString('hex'));
    assert.deepEqual(got, want, `digests at block size ${bs}`);
  }
  await s.close();
});

test('where Node offers no reused read buffer (data events), a cycle arrives just as intact', async () => {
  process.env.VMLIFT_SOCKET_DATA_EVENTS = '1';
  try {
    const d = makeDisk(6 * MiB + 4096, 21);
    const s = await t.sender('rt-events');
    const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: d.length }] });
    await sendDisk(c, 0, d);
    const img = await c.commit();
    assert.equal(sha256(await readDisk(t.rx, 'rt-events', img.imageId, 0, d.length)), sha256(d));
    await s.close();
  } finally {
    delete process.env.VMLIFT_SOCKET_DATA_EVENTS;
  }
});

test('compression 7, compressible and random chunks interleaved: raw frames and decompressed extents share the pooled buffers, and the image is bit-identical', async () => {
  const text = Buffer.from('a line of a log file, 2026-12-02 04:30:00 INFO nothing happened here\n'.repeat(16_000)).subarray(0, MiB);
  const parts: Buffer[] = [];
  for (let i = 0; i < 96; i++) {
    const chunk = i % 3 === 0 ? Buffer.from(createHash('sha512').update(String(i)).digest().toString('hex').repeat(MiB / 128)) : i % 3 === 1 ? makeDisk(MiB, 100 + i) : Buffer.from(text);
    // every chunk differs from the others, so a reused buffer holding a stale chunk would show
    Buffer.from(String(i).padStart(8, '0')).copy(chunk, (i * 4096) % MiB);
    parts.push(Buffer.from(chunk));
  }
  const d = Buffer.concat(parts);
  const s = await t.sender('rt-c7', { compression: 7 });
  const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: d.length }] });
  await sendDisk(c, 0, d);
  const img = await c.commit();
  assert.ok(c.stats().wireBytes < c.stats().payloadBytes * 0.9, 'some chunks were sent compressed');
  assert.equal(sha256(await readDisk(t.rx, 'rt-c7', img.imageId, 0, d.length)), sha256(d));
  await s.close();
});

/** The digest tree of `ranges` of `disk` as a sender computes it (digest-tree.ts). */
async function treeOf(disk: Buffer, ranges: { offset: number; length: number }[]) {
  return { ranges, root: await treeRootOf(ranges, async (o, l) => disk.subarray(o, o + l)) };
}

test('checksum: the commit verifies source digests before publishing; a mismatch publishes nothing and the sender drops the cycle', async () => {
  const d = makeDisk(6 * MiB, 3);
  const s = await t.sender('ck-a', { checksum: true });
  const c = await s.beginCycle({ cycleId: 'ok', disks: [{ disk: 0, capacity: d.length }] });
  await sendDisk(c, 0, d);
  const img = await c.commit({ sourceDigests: [{ disk: 0, sha256: sha256(d), tree: await treeOf(d, [{ offset: 4096, length: MiB + 8192 }, { offset: 3 * MiB, length: 3 * MiB }]) }] });
  assert.equal(img.imageId, '1');

  const c2 = await s.beginCycle({ cycleId: 'bad', disks: [{ disk: 0, capacity: d.length }] });
  const wrong = Buffer.from(d); wrong[MiB + 100] = (wrong[MiB + 100]! + 1) & 0xff;
  await c2.send(0, 0, d.subarray(0, 2 * MiB));
  await assert.rejects(c2.commit({ sourceDigests: [{ disk: 0, tree: await treeOf(wrong, [{ offset: 0, length: 2 * MiB }]) }] }), (e: unknown) => {
    assert.ok(e instanceof RemoteError);
    assert.equal(e.code, 'CHECKSUM_MISMATCH');
    assert.match(e.message, /does not match the source digests: disk 0: the digest tree over the 1 ranges read has root [0-9a-f]{64}, source says [0-9a-f]{64}; nothing was published/);
    assert.ok(e.fix);
    return true;
  });
  assert.deepEqual((await s.listImages()).map((i) => i.imageId), ['1'], 'the mismatching image is not published');
  assert.deepEqual(await t.rx.store.openCycles('ck-a'), [], 'the sender aborted the mismatching cycle');
  assert.ok(t.log.lines.some((l) => String(l.msg).includes('checksum mismatch; nothing published')));
  // the whole-disk form too
  const c3 = await s.beginCycle({ cycleId: 'bad2', disks: [{ disk: 0, capacity: d.length }] });
  await sendDisk(c3, 0, d);
  await assert.rejects(c3.commit({ sourceDigests: [{ disk: 0, sha256: sha256(wrong) }] }), /disk 0: SHA-256 [0-9a-f]{64}, source says/);
  assert.deepEqual((await s.listImages()).map((i) => i.imageId), ['1']);
  await s.close();
});

test('retention: maxImages from begin keeps the newest images', async () => {
  const s = await t.sender('ret-a');
  const disks = [{ disk: 0, capacity: 2 * MiB }];
  for (let i = 1; i <= 4; i++) {
    const c = await s.beginCycle({ cycleId: `r${i}`, disks, maxImages: 2 });
    await c.send(0, 0, Buffer.alloc(MiB, i));
    await c.commit();
  }
  assert.deepEqual((await s.listImages()).map((i) => i.imageId), ['3', '4']);
  const b = await t.rx.store.readImage('ret-a', '4', 0, 0, 16);
  assert.equal(b[0], 4);
  await s.close();
});

test('an open cycle survives a receiver restart and can then be resumed or aborted', async () => {
  const { startReceiver } = await import('../../src/receiver/server.ts');
  const { Sender } = await import('../../src/transfer/sender.ts');
  const dataDir = join(t.dir, 'rx2');
  let rx = await startReceiver({ dataDir, controlPort: 0, dataPort: 0, listen: '127.0.0.1' });
  const code = rx.createdCode!.code;
  const opts = (port: number) => ({ receiver: `127.0.0.1:${port}`, fingerprint: rx.fingerprint, credentialFile: join(t.dir, 'rx2.cred'),
    activationCode: code, sourceId: 'ab-a', compression: 7, bandwidthMbps: 0, checksum: false });
  const disks = [{ disk: 0, capacity: 4 * MiB }];
  let s = await Sender.connect(opts(rx.controlPort));
  const c = await s.beginCycle({ cycleId: 'c1', disks });
  await c.send(0, 0, Buffer.alloc(2 * MiB, 1));
  await c.flush();
  await s.close();
  await rx.close();
  rx = await startReceiver({ dataDir, controlPort: 0, dataPort: 0, listen: '127.0.0.1' });
  try {
    s = await Sender.connect(opts(rx.controlPort));
    const again = await s.beginCycle({ cycleId: 'c1', disks });
    assert.deepEqual(again.held, [{ disk: 0, ranges: [{ offset: 0, length: 2 * MiB }] }]);
    await s.close();
    await rx.close();
    rx = await startReceiver({ dataDir, controlPort: 0, dataPort: 0, listen: '127.0.0.1' });
    s = await Sender.connect(opts(rx.controlPort));
    // abort straight after a restart: the cycle is only on disk
    const ctl = s.control;
    await ctl.request('POST', '/v1/cycles/c1/abort', { disks });
    assert.deepEqual(await rx.store.openCycles('ab-a'), []);
    assert.deepEqual(await s.listImages(), []);
    await s.close();
  } finally { await rx.close(); }
});
