// A job's disk selection (`job create --disks 0,2`, `--exclude-disk KEY`): the disks left out are
// never read — the lab counts what it serves of each disk's extents, and serves none of theirs — and
// the images hold only the disks chosen, naming their device keys.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRig, settings, liveSha, imageSha, guestWrites } from './harness.ts';

test('an excluded disk is never read, in full and incremental cycles; --disks keeps only the positions named; a position the VM lacks fails with the fix', async (t) => {
  const rig = await startRig({ diskMb: 16 });
  t.after(() => rig.close());
  const { lab, engine, rx } = rig;
  const vm = lab.vm('two-disks');
  const [d0, d1] = vm.disks;
  for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 20);
  const traffic = async (key: number) => (await lab.traffic())[`${vm.name}/${key}`] ?? { folderRequests: 0, folderBytes: 0, viewBytes: 0, nbdExports: 0 };

  await lab.traffic(true);
  engine.createJob({ id: 'only-first', vmRef: vm.moref, disks: { exclude: [d1!.key] }, settings: settings(), start: true });
  assert.equal(engine.getJob('only-first').state, 'syncing', 'created with start: syncing at once');
  const want0 = await liveSha(lab, vm.name, d0!.key, d0!.capacity);
  await engine.runNow('only-first');
  let job = engine.getJob('only-first');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  let [c] = rig.state.listCycles('only-first');
  let image = (await rx.rx.store.listImages('only-first')).find((i) => i.imageId === c!.imageId)!;
  assert.equal(image.disks.length, 1, 'the image holds the one disk kept');
  assert.deepEqual(image.meta.diskKeys, [d0!.key]);
  assert.deepEqual(image.meta.excludedDiskKeys, [d1!.key], 'the image names the disk left out');
  assert.equal(await imageSha(rx, 'only-first', c!.imageId!, 0, d0!.capacity), want0);
  assert.ok((await traffic(d0!.key)).folderBytes > 0, 'the kept disk was read over /folder');
  assert.deepEqual(await traffic(d1!.key), { folderRequests: 0, folderBytes: 0, viewBytes: 0, nbdExports: 0 }, 'nothing of the excluded disk was served');
  assert.deepEqual(rig.state.getDisks('only-first').map((d) => d.diskKey), [d0!.key]);

  // incremental: both disks change, only the kept one is read
  for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 5);
  const want0b = await liveSha(lab, vm.name, d0!.key, d0!.capacity);
  engine.requestSync('only-first');
  await engine.runNow('only-first');
  job = engine.getJob('only-first');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  [c] = rig.state.listCycles('only-first');
  assert.equal(c!.kind, 'incremental');
  assert.ok(c!.sourceBytesRead <= 5 * 64 * 1024, `the incremental read only the changed blocks of the kept disk (${c!.sourceBytesRead} B)`);
  assert.equal(await imageSha(rx, 'only-first', c!.imageId!, 0, d0!.capacity), want0b);
  assert.equal((await traffic(d1!.key)).folderBytes, 0, 'the excluded disk is still not read');
  assert.equal((await traffic(d1!.key)).folderRequests, 0);

  // --disks 1: the second disk only
  await lab.traffic(true);
  engine.createJob({ id: 'only-second', vmRef: vm.moref, disks: { include: [1] }, settings: settings(), start: true });
  const want1 = await liveSha(lab, vm.name, d1!.key, d1!.capacity);
  await engine.runNow('only-second');
  assert.equal(engine.getJob('only-second').state, 'waiting', JSON.stringify(engine.getJob('only-second').error));
  [c] = rig.state.listCycles('only-second');
  image = (await rx.rx.store.listImages('only-second')).find((i) => i.imageId === c!.imageId)!;
  assert.deepEqual(image.meta.diskKeys, [d1!.key]);
  assert.equal(await imageSha(rx, 'only-second', c!.imageId!, 0, d1!.capacity), want1);
  assert.equal((await traffic(d0!.key)).folderBytes, 0, 'the disk not named was not read');
  assert.ok((await traffic(d1!.key)).folderBytes > 0);

  // a position the VM lacks: the cycle fails in its plan step with the fix, and leaves no snapshot
  engine.createJob({ id: 'bad-pick', vmRef: vm.moref, disks: { include: [0, 5] }, settings: settings(), start: true });
  await engine.runNow('bad-pick');
  job = engine.getJob('bad-pick');
  assert.equal(job.state, 'error');
  assert.equal(job.error?.step, 'plan');
  assert.equal(job.error?.code, 'NO_SUCH_DISK');
  assert.match(job.error!.message, /has 2 disk\(s\) \(positions 0–1\); --disks names 5/);
  assert.match(job.error!.fix!, /vmlift vc show/);
  assert.deepEqual((await rig.vc.snapshots(vm.moref)).snapshots, [], 'no snapshot left');
});
