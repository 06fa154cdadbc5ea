/** The engine against change tracking as ESXi does it (the lab): tracking that waits for a stun, whole-disk areas. */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startRig, settings, liveSha, imageSha, guestWrites, type EngineRig } from './harness.ts';
import { methods, waitForTask } from '../../src/vsphere/index.ts';

let rig: EngineRig;
before(async () => { rig = await startRig({ vms: 2 }); });
after(async () => { await rig?.close(); });

test('CBT turned on by another tool without a stun: the first cycle stops with VC_CBT_NOT_ACTIVE (cause and fix), leaves no snapshot; resumed, the job syncs', async () => {
  const { lab, engine, rx, vc } = rig;
  const vm = lab.vm('vm-0001');
  const info = await vc.vm(vm.moref);
  assert.equal(info.powerState, 'poweredOn');
  const extraConfig = [{ key: 'ctkEnabled', value: 'TRUE' }, ...info.disks.map((d) => ({ key: `${d.busId}.ctkEnabled`, value: 'TRUE' }))];
  await waitForTask(vc.session, await methods.reconfigVM(vc.session, { type: 'VirtualMachine', value: vm.moref }, { changeTrackingEnabled: true, extraConfig }));

  engine.createJob({ id: 'web', vmRef: vm.moref, settings: settings() });
  engine.start('web');
  await engine.runNow('web');
  let job = engine.getJob('web');
  assert.equal(job.state, 'error');
  assert.equal(job.error?.step, 'plan');
  assert.equal(job.error?.code, 'VC_CBT_NOT_ACTIVE');
  assert.match(job.error?.message ?? '', /change tracking is not active on disk 2000 .*no changeId.*stun/);
  assert.match(job.error?.fix ?? '', /vmlift job resume web/);
  assert.equal(job.error?.attempts, 1, 'not retried blindly: the user is told');
  assert.equal((await vc.snapshots(vm.moref)).snapshots.length, 0, 'the cycle snapshot was removed');

  const d = vm.disks[0]!;
  await guestWrites(lab, vm.name, d.key, d.capacity, 10);
  const expected = await liveSha(lab, vm.name, d.key, d.capacity);
  engine.resume('web');
  await engine.runNow('web');
  job = engine.getJob('web');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  const [c] = rig.state.listCycles('web');
  assert.equal(c!.state, 'committed');
  assert.equal(await imageSha(rx, 'web', c!.imageId!, 0, d.capacity), expected);
  assert.ok(rig.state.getDisks('web').every((x) => x.changeId && / [0-9a-f]{2}-[0-9a-f]{2} .*\/\d+$/.test(x.changeId)), 'vCenter-format changeIds recorded');
});

test('a disk that answers one area covering the whole disk: the incremental reads it all and stays bit-identical', async () => {
  const { lab, engine, rx } = rig;
  const vm = lab.vm('vm-0002');
  const d = vm.disks[0]!;
  engine.createJob({ id: 'nfs', vmRef: vm.moref, settings: settings() });
  engine.start('nfs');
  await engine.runNow('nfs');
  assert.equal(engine.getJob('nfs').state, 'waiting', JSON.stringify(engine.getJob('nfs').error));

  await lab.cbtMode(vm.name, 'whole-disk');
  try {
    await guestWrites(lab, vm.name, d.key, d.capacity, 6);
    const expected = await liveSha(lab, vm.name, d.key, d.capacity);
    engine.requestSync('nfs');
    await engine.runNow('nfs');
    assert.equal(engine.getJob('nfs').state, 'waiting', JSON.stringify(engine.getJob('nfs').error));
    const [c] = rig.state.listCycles('nfs');
    assert.equal(c!.kind, 'incremental');
    assert.equal(c!.changedBytes, d.capacity, 'the whole disk was reported');
    assert.equal(await imageSha(rx, 'nfs', c!.imageId!, 0, d.capacity), expected);
  } finally {
    await lab.cbtMode(vm.name, 'runs');
  }
});
