/** The engine against change tracking as ESXi does it (the lab): tracking that waits for a stun, whole-disk areas. */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startRig, settings, liveSha, imageSha, guestWrites, type EngineRig } from './harness.ts';
import { methods, waitForTask } from '../../src/vsphere/index.ts';

let rig: EngineRig;
before(async () => { rig = await startRig({ vms: 2 }); });
after(async () => { await rig?.close(); });

test('CBT turned on without a stun: the attempt that finds no changeId is retried and syncs; CBT turned off between cycles: re-enabled and read in full', async () => {
  const { lab, engine, rx, vc, counters } = rig;
  const vm = lab.vm('vm-0001');
  const d = vm.disks[0]!;
  const info = await vc.vm(vm.moref);
  assert.equal(info.powerState, 'poweredOn');
  // As another tool does it: ReconfigVM and no stun, so enableCbt later finds nothing to change.
  const extraConfig = [{ key: 'ctkEnabled', value: 'TRUE' }, ...info.disks.map((x) => ({ key: `${x.busId}.ctkEnabled`, value: 'TRUE' }))];
  await waitForTask(vc.session, await methods.reconfigVM(vc.session, { type: 'VirtualMachine', value: vm.moref }, { changeTrackingEnabled: true, extraConfig }));

  await guestWrites(lab, vm.name, d.key, d.capacity, 10);
  let expected = await liveSha(lab, vm.name, d.key, d.capacity);
  const snaps0 = counters.snapshotsCreated;
  engine.createJob({ id: 'web', vmRef: vm.moref, settings: settings() });
  engine.start('web');
  await engine.runNow('web');
  let job = engine.getJob('web');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  assert.equal(counters.snapshotsCreated - snaps0, 2, 'the first snapshot had no changeId; its removal was the stun, the retry\'s snapshot has them');
  let [c] = rig.state.listCycles('web');
  assert.equal(await imageSha(rx, 'web', c!.imageId!, 0, d.capacity), expected);
  assert.ok(rig.state.getDisks('web').every((x) => x.changeId && / [0-9a-f]{2}-[0-9a-f]{2} .*\/\d+$/.test(x.changeId)), 'vCenter-format changeIds recorded');

  // An administrator turns CBT off: the next cycle turns it on again (with the stun) and reads the disk in full
  // (cbt-recovery-lab.test.ts has the cases); VC_CBT_NOT_ACTIVE above stays for tracking that waits for a stun.
  await vc.disableCbt(vm.moref);
  await guestWrites(lab, vm.name, d.key, d.capacity, 3);
  expected = await liveSha(lab, vm.name, d.key, d.capacity);
  engine.requestSync('web');
  await engine.runNow('web');
  job = engine.getJob('web');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  [c] = rig.state.listCycles('web');
  assert.equal(c!.state, 'committed');
  assert.match(c!.reason ?? '', /CBT was turned off since the last cycle; vmlift re-enabled it/, 'tracking restarted: a full read');
  assert.equal(await imageSha(rx, 'web', c!.imageId!, 0, d.capacity), expected);
  assert.equal((await vc.snapshots(vm.moref)).snapshots.length, 0, 'no snapshot left');
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
