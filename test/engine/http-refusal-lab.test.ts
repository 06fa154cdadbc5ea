/**
 * Jobs over the HTTP datastore transport meet what it cannot read: a cycle whose snapshot is second in
 * the chain (a backup product's snapshot was taken meanwhile), and a disk on vSAN. The disk fails with
 * the reason and the fix, nothing is read, and no vmlift snapshot is left behind.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRig, settings, liveSha, imageSha, MiB } from './harness.ts';

test('HTTP transport: a delta at the cycle snapshot and a vSAN disk fail with the cause and the fix; removing the foreign snapshot lets the job go on', async (t) => {
  const rig = await startRig({ vms: 1, diskMb: 16, retry: { attempts: 2, baseDelayMs: 20, maxDelayMs: 50 } });
  t.after(() => rig.close());
  const { lab, engine, vc } = rig;
  const vm = lab.vm('vm-0001');

  engine.createJob({ id: 'app', vmRef: vm.moref, settings: settings() });
  engine.start('app');
  await engine.runNow('app');
  assert.equal(engine.getJob('app').state, 'waiting', JSON.stringify(engine.getJob('app').error));

  // A backup product snapshots the VM and keeps the snapshot while it copies.
  const foreign = await vc.createSnapshot(vm.moref, 'VEEAM BACKUP TEMPORARY SNAPSHOT', { quiesce: false });
  await lab.write(vm.name, 2000, 2 * MiB, Buffer.alloc(MiB, 0x3c));
  const opensBefore = rig.counters.diskOpens;
  engine.requestSync('app');
  await engine.runNow('app');
  let job = engine.getJob('app');
  assert.equal(job.state, 'error');
  assert.equal(job.error?.code, 'HTTP_DS_DELTA');
  assert.equal(job.error?.step, 'transfer');
  assert.match(job.error?.message ?? '', /^transfer: disk \[LocalDS_0\] vm-0001\/vm-0001-000001\.vmdk is a delta disk \(seSparseFormat\) of snapshot vmlift-\S+, on \[LocalDS_0\] vm-0001\/vm-0001\.vmdk/);
  assert.equal(job.error?.fix, 'use --transport vddk or nbd, or set the VDDK libdir: connector init --vddk-libdir DIR');
  assert.ok(rig.counters.diskOpens > opensBefore, 'the refusal came from the disk opener');
  const failed = rig.state.listCycles('app')[0]!;
  assert.equal(failed.state, 'failed');
  assert.equal(failed.sourceBytesRead, 0, 'nothing was read');
  assert.deepEqual((await vc.snapshots(vm.moref)).snapshots.map((s) => s.name), ['VEEAM BACKUP TEMPORARY SNAPSHOT'], 'the cycle snapshot was removed, the foreign one kept');

  // The backup finishes; the next cycle's snapshot is first again and HTTP reads its flat base disk.
  await vc.removeSnapshot(vm.moref, foreign.ref);
  const want = await liveSha(lab, vm.name, 2000, vm.disks[0]!.capacity);
  assert.equal(engine.resume('app').state, 'syncing');
  await engine.runNow('app');
  job = engine.getJob('app');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  const ok = rig.state.listCycles('app')[0]!;
  assert.equal(ok.state, 'committed');
  assert.equal(await imageSha(rig.rx, job.sourceId, ok.imageId!, 0, vm.disks[0]!.capacity), want);

  // A VM on vSAN: the first cycle's disks are vSAN objects, refused before any read.
  const vs = lab.vm('shape-vsan');
  engine.createJob({ id: 'vsan', vmRef: vs.moref, settings: settings() });
  engine.start('vsan');
  await engine.runNow('vsan');
  const vj = engine.getJob('vsan');
  assert.equal(vj.state, 'error');
  assert.equal(vj.error?.code, 'HTTP_DS_OBJECT');
  assert.match(vj.error?.message ?? '', /^transfer: disk \[vsanDatastore\] shape-vsan\/shape-vsan(_1)?\.vmdk is a vSAN object \(object [0-9a-f-]{36}\), no flat file/);
  assert.match(vj.error?.fix ?? '', /--transport vddk or nbd/);
  assert.equal(rig.state.listCycles('vsan')[0]!.sourceBytesRead, 0);
  assert.equal((await vc.snapshots(vs.moref)).snapshots.length, 0, 'no vmlift snapshot left on the vSAN VM');
});
