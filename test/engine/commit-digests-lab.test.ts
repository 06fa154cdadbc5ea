// With checksum on, the commit carries one digest-tree root per disk: its body stays small
// whatever the disk's size and the bytes read (a 2 TiB sparse lab disk with scattered data), and
// the receiver verifies the image against it before publishing it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomInt } from 'node:crypto';
import { startRig, settings, MiB } from './harness.ts';

const TiB = 2 ** 40;

test('a 2 TiB sparse disk with scattered data: the commit body stays small, the image verifies and holds the data', async (t) => {
  const rig = await startRig({ vms: 1, diskMb: 16 });
  t.after(() => rig.close());
  const { lab, engine, rx } = rig;
  const vm = lab.vm('vm-0001');
  const big = await lab.addDisk(vm.name, 2001, 2 * TiB);
  assert.equal(big.capacity, 2 * TiB);
  // scattered areas over the whole disk, and one long run: 2 MiB reads of it were one digest each before
  const areas: { offset: number; length: number }[] = [{ offset: 700 * 1024 * MiB, length: 96 * MiB }];
  for (let i = 0; i < 40; i++) areas.push({ offset: randomInt(1, 2 * 1024 * 1024 - 8) * MiB + randomInt(0, 16) * 65536, length: randomInt(1, 40) * 65536 });
  for (const a of areas) {
    for (let o = 0; o < a.length; o += 8 * MiB) await lab.write(vm.name, big.key, a.offset + o, randomBytes(Math.min(8 * MiB, a.length - o)));
  }

  engine.createJob({ id: 'big', vmRef: vm.moref, settings: settings({ checksum: true }) });
  engine.start('big');
  await engine.runNow('big');
  const job = engine.getJob('big');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  const [c1] = rig.state.listCycles('big');
  assert.equal(c1!.state, 'committed');
  const img = await rx.rx.store.getImage(job.sourceId, c1!.imageId!);
  const bigDisk = img.disks.find((d) => d.capacity === 2 * TiB)!;
  assert.ok(bigDisk, 'the image has the 2 TiB disk');

  const commits = rx.log.lines.filter((l) => l.msg === 'commit requested' && l.cycleId === img.cycleId);
  assert.equal(commits.length, 1);
  const bodyBytes = commits[0]!.bodyBytes as number;
  const readBytes = areas.reduce((n, a) => n + a.length, 0);
  const perReadForm = Math.ceil(readBytes / (2 * MiB)) * 117;
  t.diagnostic(`commit body ${bodyBytes} bytes for ${(readBytes / MiB).toFixed(0)} MiB read of a 2 TiB disk (one digest per 2 MiB read would add ~${perReadForm} bytes)`);
  assert.ok(bodyBytes < 12 * 1024, `commit body ${bodyBytes} bytes: a root and the ranges read per disk, not one entry per read`);
  assert.ok(rx.log.lines.every((l) => l.errCode !== 'CHECKSUM_MISMATCH'));

  // the image holds the scattered data (and verifies chunk by chunk)
  for (const a of areas.slice(0, 12)) {
    const want = await lab.read(vm.name, big.key, a.offset, Math.min(a.length, 8 * MiB));
    const got = await rx.rx.store.readImage(job.sourceId, img.imageId, bigDisk.disk, a.offset, want.length);
    assert.ok(got.equals(want), `area at ${a.offset}`);
  }
  const v = await rx.rx.store.verify(job.sourceId, img.imageId);
  assert.equal(v.ok, true, JSON.stringify(v.bad.slice(0, 3)));

  // an incremental cycle over scattered guest writes: the same bounded body
  const writes: number[] = [];
  for (let i = 0; i < 200; i++) {
    const off = randomInt(0, 2 * 1024 * 1024 * 16) * 65536;
    writes.push(off);
    await lab.write(vm.name, big.key, off, randomBytes(65536));
  }
  engine.requestSync('big');
  await engine.runNow('big');
  assert.equal(engine.getJob('big').state, 'waiting', JSON.stringify(engine.getJob('big').error));
  const [c2] = rig.state.listCycles('big');
  assert.equal(c2!.kind, 'incremental');
  const img2 = await rx.rx.store.getImage(job.sourceId, c2!.imageId!);
  const body2 = rx.log.lines.find((l) => l.msg === 'commit requested' && l.cycleId === img2.cycleId)!.bodyBytes as number;
  t.diagnostic(`incremental: commit body ${body2} bytes for 200 scattered 64 KiB writes`);
  assert.ok(body2 < 24 * 1024, `incremental commit body ${body2} bytes`);
  for (const off of writes.slice(0, 20)) {
    const got = await rx.rx.store.readImage(job.sourceId, img2.imageId, bigDisk.disk, off, 65536);
    assert.ok(got.equals(await lab.read(vm.name, big.key, off, 65536)), `write at ${off}`);
  }
  assert.ok(rx.log.lines.every((l) => l.errCode !== 'CHECKSUM_MISMATCH'));
});
