import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { labFixture, connect, folderRead } from './helpers.ts';
import type { Lab } from '../../lab/lab.ts';
import { fetchVmByRef, methods, waitForTask, type VCenter } from '../../src/vsphere/index.ts';

let fx: Awaited<ReturnType<typeof labFixture>>;
let lab: Lab;
let vc: VCenter;

before(async () => { fx = await labFixture({ vms: 4 }); lab = fx.lab; vc = await connect(lab); });
after(async () => { await vc?.close(); await fx?.cleanup(); });

test('CBT enable sets changeTrackingEnabled, ctkEnabled and every <bus>.ctkEnabled; a second run changes nothing', async () => {
  const r1 = await vc.enableCbt('two-disks');
  assert.equal(r1.changed, true);
  assert.equal(r1.stunned, true, 'powered-on VM gets a stun/unstun');
  const vm = await vc.vm('two-disks');
  assert.equal(vm.changeTrackingEnabled, true);
  assert.equal(vm.ctkConfig['ctkEnabled'], 'TRUE');
  assert.equal(vm.ctkConfig['scsi0:0.ctkEnabled'], 'TRUE');
  assert.equal(vm.ctkConfig['scsi1:0.ctkEnabled'], 'TRUE');
  assert.deepEqual(vm.disks.map((d) => d.ctkEnabled), [true, true]);
  assert.equal(vm.snapshots.length, 0, 'the stun snapshot is gone');

  const rt = vc.roundTrips;
  const r2 = await vc.enableCbt('two-disks');
  assert.equal(r2.changed, false);
  assert.equal(r2.stunned, false);
  // read-only calls only: view + retrieve + destroy + VM + host (no ReconfigVM, no task wait)
  assert.ok(vc.roundTrips - rt <= 5, `second run made ${vc.roundTrips - rt} calls`);
  const again = await vc.vm('two-disks');
  assert.deepEqual(again.ctkConfig, vm.ctkConfig, 'no duplicate or changed settings');

  const off = await vc.disableCbt('two-disks');
  assert.equal(off.changed, true);
  const vmOff = await vc.vm('two-disks');
  assert.equal(vmOff.changeTrackingEnabled, false);
  assert.equal(vmOff.ctkConfig['ctkEnabled'], 'FALSE');
  assert.equal(vmOff.ctkConfig['scsi1:0.ctkEnabled'], 'FALSE');
  assert.equal((await vc.disableCbt('two-disks')).changed, false);
});

test('snapshot create/remove leaves no snapshot; sweep removes only vmlift- snapshots', async () => {
  const vm = await vc.vm('vm-0001');
  const progress: number[] = [];
  await lab.delayTasks('createSnapshot', 600);
  const s = await vc.createSnapshot(vm.ref, 'vmlift-test-1', { quiesce: true }, { onProgress: (p) => progress.push(p) });
  await lab.delayTasks('createSnapshot', 0);
  assert.ok(progress.includes(100) && progress.some((p) => p > 0 && p < 100), `progress reported: ${progress}`);
  let now = await vc.vm('vm-0001');
  assert.deepEqual(now.snapshots.map((x) => [x.ref, x.name, x.quiesced]), [[s.ref, 'vmlift-test-1', true]]);
  await vc.removeSnapshot(vm.ref, s.ref);
  now = await vc.vm('vm-0001');
  assert.equal(now.snapshots.length, 0);
  assert.equal(now.consolidationNeeded, false);

  const a = await vc.createSnapshot(vm.ref, 'vmlift-left-1', { quiesce: false });
  await vc.createSnapshot(vm.ref, 'admin-keep', { quiesce: false });
  await vc.createSnapshot(vm.ref, 'vmlift-left-2', { quiesce: false });
  const sw = await vc.sweepSnapshots('vm-0001');
  assert.deepEqual(sw.removed, ['vmlift-left-2', 'vmlift-left-1']);
  now = await vc.vm('vm-0001');
  assert.deepEqual(now.snapshots.map((x) => x.name), ['admin-keep']);
  assert.notEqual(now.snapshots[0]!.ref, a.ref);
  await vc.removeSnapshot(vm.ref, now.snapshots[0]!.ref);
  assert.equal((await vc.vm('vm-0001')).snapshots.length, 0);
});

test('an expired session logs in again transparently', async () => {
  const before = vc.session.relogins;
  const expired = await lab.expireSessions();
  assert.ok(expired >= 1);
  const inv = await vc.inventory();
  assert.equal(inv.vms.length, lab.vms.length);
  assert.equal(vc.session.relogins, before + 1);
  // datastore access follows: the old cookie is refused, the new one works
  const d = lab.vm('vm-0002').disks[0]!;
  const { url, cookie } = vc.diskUrl({ file: d.file }, lab.datacenter);
  assert.equal((await folderRead(lab, url, cookie, 0, 16)).status, 206);
  assert.equal((await folderRead(lab, url, 'vmware_soap_session=stale', 0, 16)).status, 401);
  // a datastore reader that meets a 401 after expiry logs in again explicitly
  await lab.expireSessions();
  assert.equal((await folderRead(lab, url, cookie, 0, 16)).status, 401);
  const fresh = await vc.session.relogin();
  assert.notEqual(fresh, cookie);
  assert.equal((await folderRead(lab, url, fresh, 0, 16)).status, 206);
});

test('an injected task failure gives a clear error and leaves no snapshot', async () => {
  const vm = await vc.vm('vm-0002');
  await lab.injectFault('createSnapshot');
  await assert.rejects(vc.createSnapshot(vm.ref, 'vmlift-fail', { quiesce: false }),
    (e: Error & { fix?: string }) => /creating snapshot vmlift-fail of vm-\d+ failed in vCenter: An error occurred while running CreateSnapshot_Task/.test(e.message) && !!e.fix);
  assert.equal((await vc.vm('vm-0002')).snapshots.length, 0);

  await lab.injectFault('reconfigure');
  await assert.rejects(vc.enableCbt('vm-0002'), /enabling CBT on vm-0002 failed in vCenter/);
  const after = await fetchVmByRef(vc.session, vm.ref);
  assert.equal(after.changeTrackingEnabled, false, 'failed reconfigure changed nothing');
  assert.equal(after.snapshots.length, 0);

  const s = await vc.createSnapshot(vm.ref, 'vmlift-x', { quiesce: false });
  await lab.injectFault('removeSnapshot');
  await assert.rejects(vc.removeSnapshot(vm.ref, s.ref), /removing snapshot .* failed in vCenter/);
  const sw = await vc.sweepSnapshots('vm-0002');
  assert.deepEqual(sw.removed, ['vmlift-x'], 'the next sweep cleans up after a failed removal');
  assert.equal((await vc.vm('vm-0002')).snapshots.length, 0);
});

test('task wait times out with a clear message', async () => {
  const vm = await vc.vm('vm-0004');
  await lab.delayTasks('createSnapshot', 3000);
  try {
    await assert.rejects(vc.createSnapshot(vm.ref, 'vmlift-slow', { quiesce: false }, { timeoutMs: 300 }), /did not finish within/);
  } finally {
    await lab.delayTasks('createSnapshot', 0);
  }
  await new Promise((r) => setTimeout(r, 3200));
  await vc.sweepSnapshots('vm-0004');
  assert.equal((await vc.vm('vm-0004')).snapshots.length, 0);
});

test('consolidation: a removal that leaves consolidationNeeded is followed by ConsolidateVMDisks', async () => {
  const ref = lab.vm('vm-0003').moref;
  const s = await vc.createSnapshot(ref, 'vmlift-cons', { quiesce: false });
  await lab.injectFault('needConsolidation');
  assert.deepEqual(await vc.removeSnapshot(ref, s.ref), { consolidated: true });
  let vm = await vc.vm(ref);
  assert.equal(vm.consolidationNeeded, false);
  assert.equal(vm.snapshots.length, 0);

  // Left needing consolidation by someone else: preflight says so with the fix; a sweep consolidates.
  const s2 = await vc.createSnapshot(ref, 'other-tool', { quiesce: false });
  await lab.injectFault('needConsolidation');
  await waitForTask(vc.session, await methods.removeSnapshotTask(vc.session, { type: 'VirtualMachineSnapshot', value: s2.ref }, { removeChildren: false, consolidate: false }));
  const pf = await vc.preflight(ref);
  const c = pf.checks.find((x) => x.name === 'consolidation')!;
  assert.equal(c.ok, false);
  assert.match(c.fix!, /--sweep/);
  assert.equal((await vc.sweepSnapshots(ref)).consolidated, true);
  vm = await vc.vm(ref);
  assert.equal(vm.consolidationNeeded, false);
});
