/**
 * Change tracking as ESXi does it, against the lab: vCenter's changeId format, tracking that starts
 * only at a stun, the fault forms of QueryChangedDiskAreas, and a disk that answers one whole-disk area.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Agent, request } from 'undici';
import { labFixture, connect, vmlift, labEnv } from './helpers.ts';
import type { Lab } from '../../lab/lab.ts';
import { methods, parseChangeId, VimFault, waitForTask, type VCenter } from '../../src/vsphere/index.ts';

let fx: Awaited<ReturnType<typeof labFixture>>;
let lab: Lab;
let vc: VCenter;
const MB = 1 << 20;
/** vCenter's form: 16 hex bytes, spaced, a dash in the middle, then /sequence. */
const VC_CHANGE_ID = /^52( [0-9a-f]{2}){7}-[0-9a-f]{2}( [0-9a-f]{2}){7}\/\d+$/;

before(async () => { fx = await labFixture({ vms: 4 }); lab = fx.lab; vc = await connect(lab); });
after(async () => { await vc?.close(); await fx?.cleanup(); });

const vmMor = (value: string) => ({ type: 'VirtualMachine' as const, value });
const snapMor = (value: string) => ({ type: 'VirtualMachineSnapshot' as const, value });

/** What another tool does: CBT on through ReconfigVM, and no stun after it. */
async function enableWithoutStun(vmName: string): Promise<void> {
  const vm = await vc.vm(vmName);
  const extraConfig = [{ key: 'ctkEnabled', value: 'TRUE' }, ...vm.disks.map((d) => ({ key: `${d.busId}.ctkEnabled`, value: 'TRUE' }))];
  await waitForTask(vc.session, await methods.reconfigVM(vc.session, vmMor(vm.ref), { changeTrackingEnabled: true, extraConfig }));
}

/** A power operation through the SDK (vmlift itself never powers VMs, so its client has no such call). */
async function power(vmRef: string, method: 'PowerOffVM_Task' | 'PowerOnVM_Task'): Promise<void> {
  const agent = new Agent({ connect: { ca: lab.certPem } });
  try {
    const body = '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>' +
      `<${method} xmlns="urn:vim25"><_this type="VirtualMachine">${vmRef}</_this></${method}></soapenv:Body></soapenv:Envelope>`;
    const res = await request(lab.url, { method: 'POST', dispatcher: agent, body,
      headers: { 'content-type': 'text/xml; charset=utf-8', soapaction: 'urn:vim25/8.0', cookie: vc.session.cookie ?? '' } });
    const text = await res.body.text();
    const task = /<returnval type="Task">([^<]+)</.exec(text)?.[1];
    assert.ok(task, `${method}: ${text}`);
    await waitForTask(vc.session, { type: 'Task', value: task });
  } finally {
    await agent.close();
  }
}

async function changeIdOf(snapshot: string, key = 2000): Promise<string | null> {
  return (await vc.snapshotDisks(snapshot)).find((d) => d.key === key)!.changeId;
}

test('enableCbt on a running VM stuns it, so the first snapshot carries a changeId in vCenter\'s format; the CLI takes it quoted', async () => {
  const vm = await vc.vm('vm-0002');
  assert.equal(vm.powerState, 'poweredOn');
  const r = await vc.enableCbt(vm.ref);
  assert.equal(r.changed, true);
  assert.equal((await vc.vm(vm.ref)).snapshots.length, 0, 'the stun snapshot is gone');

  const s1 = await vc.createSnapshot(vm.ref, 'vmlift-a1', { quiesce: false });
  const id1 = await changeIdOf(s1.ref);
  assert.match(id1 ?? 'none', VC_CHANGE_ID, 'the first snapshot after enableCbt carries a changeId (it would not without the stun)');
  assert.equal(r.stunned, true);
  assert.deepEqual((await lab.snapshots('vm-0002'))[0]!.changeIds, { 2000: id1 });
  await vc.removeSnapshot(vm.ref, s1.ref);

  await lab.write('vm-0002', 2000, 3 * MB + 5, Buffer.alloc(100, 1));
  const s2 = await vc.createSnapshot(vm.ref, 'vmlift-a2', { quiesce: false });
  const id2 = (await changeIdOf(s2.ref))!;
  assert.match(id2, VC_CHANGE_ID);
  assert.equal(parseChangeId(id2)!.uuid, parseChangeId(id1!)!.uuid, 'one CBT epoch: same UUID part');
  assert.equal(parseChangeId(id2)!.seq, parseChangeId(id1!)!.seq + 1, 'the sequence grows per snapshot');

  const cli = await vmlift(['vc', 'changed-areas', 'vm-0002', '--disk', '2000', '--change-id', id1!, '--snapshot', s2.ref, '--json'], labEnv(lab));
  assert.equal(cli.code, 0, cli.stderr);
  const out = JSON.parse(cli.stdout);
  assert.deepEqual([out.sinceChangeId, out.snapshotChangeId], [id1, id2], 'changeIds with spaces go through the CLI unchanged');
  assert.ok(out.areas.some((a: { offset: number; length: number }) => a.offset <= 3 * MB + 5 && 3 * MB + 105 <= a.offset + a.length));
  const show = await vmlift(['vc', 'show', 'vm-0002'], labEnv(lab));
  assert.ok(show.stdout.includes(id2), `vc show lists the live changeId:\n${show.stdout}`);
  await vc.removeSnapshot(vm.ref, s2.ref);

  // A reset gives a new UUID part.
  await lab.resetCbt('vm-0002', 2000);
  const s3 = await vc.createSnapshot(vm.ref, 'vmlift-a3', { quiesce: false });
  const id3 = (await changeIdOf(s3.ref))!;
  assert.match(id3, VC_CHANGE_ID);
  assert.notEqual(parseChangeId(id3)!.uuid, parseChangeId(id2)!.uuid);
  await vc.removeSnapshot(vm.ref, s3.ref);
});

test('CBT enabled on a running VM without a stun: the first snapshot has no changeId and no changed areas; its own stun activates tracking', async () => {
  const vm = await vc.vm('vm-0001');
  await enableWithoutStun('vm-0001');
  const before = await vc.vm(vm.ref);
  assert.equal(before.changeTrackingEnabled, true, 'the configuration says on');

  const s1 = await vc.createSnapshot(vm.ref, 'vmlift-b1', { quiesce: false });
  assert.equal(await changeIdOf(s1.ref), null, 'not active yet: no changeId');
  await assert.rejects(methods.queryChangedDiskAreas(vc.session, vmMor(vm.ref), snapMor(s1.ref), 2000, 0, '*'), (e: unknown) =>
    e instanceof VimFault && e.type === 'InvalidArgument' && e.detail.invalidProperty === 'startOffset' && e.message === 'A specified parameter was not correct: startOffset');
  await assert.rejects(vc.changedAreas(vm.ref, s1.ref, 2000, '*'), (e: Error & { code?: string; fix?: string }) =>
    e.code === 'VC_CBT_OFF' && /vmlift vc cbt enable/.test(e.fix ?? ''));
  await vc.removeSnapshot(vm.ref, s1.ref);

  const s2 = await vc.createSnapshot(vm.ref, 'vmlift-b2', { quiesce: false });
  assert.match((await changeIdOf(s2.ref)) ?? 'none', VC_CHANGE_ID, 'after the stun, snapshots carry changeIds');
  assert.ok((await vc.changedAreas(vm.ref, s2.ref, 2000, '*')).areas.length > 0);
  await vc.removeSnapshot(vm.ref, s2.ref);
});

test('a power cycle is a stun too; on a powered-off VM tracking is active at once', async () => {
  const on = await vc.vm('vm-0004');
  await enableWithoutStun('vm-0004');
  await power(on.ref, 'PowerOffVM_Task');
  await power(on.ref, 'PowerOnVM_Task');
  const s1 = await vc.createSnapshot(on.ref, 'vmlift-c1', { quiesce: false });
  assert.match((await changeIdOf(s1.ref)) ?? 'none', VC_CHANGE_ID, 'the power cycle activated tracking');
  await vc.removeSnapshot(on.ref, s1.ref);

  const off = await vc.vm('vm-0003');
  assert.equal(off.powerState, 'poweredOff');
  const r = await vc.enableCbt(off.ref);
  assert.deepEqual([r.changed, r.stunned], [true, false], 'no stun for a powered-off VM');
  const s2 = await vc.createSnapshot(off.ref, 'vmlift-c2', { quiesce: false });
  assert.match((await changeIdOf(s2.ref)) ?? 'none', VC_CHANGE_ID);
  await vc.removeSnapshot(off.ref, s2.ref);
});

test('a removed snapshot answers NotFound (VC_SNAPSHOT_GONE); a changeId of another epoch or disk answers InvalidArgument on changeId', async () => {
  const vm = await vc.vm('two-disks');
  await vc.enableCbt(vm.ref);
  const s = await vc.createSnapshot(vm.ref, 'vmlift-d1', { quiesce: false });
  const disks = await vc.snapshotDisks(s.ref);
  const [id0, id1] = [disks[0]!.changeId!, disks[1]!.changeId!];
  await assert.rejects(vc.changedAreas(vm.ref, s.ref, disks[1]!.key, id0, disks[1]!.capacity), (e: Error & { code?: string }) => e.code === 'VC_CHANGE_ID_INVALID');
  assert.ok(id1);
  await vc.removeSnapshot(vm.ref, s.ref);
  await assert.rejects(methods.queryChangedDiskAreas(vc.session, vmMor(vm.ref), snapMor(s.ref), 2000, 0, '*'), (e: unknown) => e instanceof VimFault && e.type === 'NotFound');
  await assert.rejects(vc.changedAreas(vm.ref, s.ref, 2000, id0, disks[0]!.capacity), (e: Error & { code?: string; fix?: string }) =>
    e.code === 'VC_SNAPSHOT_GONE' && new RegExp(`snapshot ${s.ref} no longer exists`).test(e.message) && /run the cycle again/.test(e.fix ?? ''));
});

test('whole-disk mode: one area covering the disk, in one reply, for "*" and for a changeId', async () => {
  const vm = await vc.vm('two-disks');
  await vc.enableCbt(vm.ref);
  const d = vm.disks[1]!;
  const s1 = await vc.createSnapshot(vm.ref, 'vmlift-e1', { quiesce: false });
  const id1 = (await changeIdOf(s1.ref, d.key))!;
  await vc.removeSnapshot(vm.ref, s1.ref);
  await lab.write('two-disks', d.key, 7 * MB, Buffer.alloc(10, 3));
  const s2 = await vc.createSnapshot(vm.ref, 'vmlift-e2', { quiesce: false });
  try {
    await lab.cbtMode('two-disks', 'whole-disk', d.key);
    for (const since of ['*', id1]) {
      const q = await vc.changedAreas(vm.ref, s2.ref, d.key, since, d.capacity);
      assert.deepEqual([q.areas, q.calls], [[{ offset: 0, length: d.capacity }], 1], `since ${since}`);
    }
    const other = await vc.changedAreas(vm.ref, s2.ref, vm.disks[0]!.key, '*', vm.disks[0]!.capacity);
    assert.ok(other.bytes < vm.disks[0]!.capacity, 'the other disk still answers its runs');
    await lab.cbtMode('two-disks', 'runs');
    const q = await vc.changedAreas(vm.ref, s2.ref, d.key, id1, d.capacity);
    assert.ok(q.bytes < d.capacity && q.areas.some((a) => a.offset <= 7 * MB && 7 * MB + 10 <= a.offset + a.length));
  } finally {
    await lab.cbtMode('two-disks', 'runs');
    await vc.removeSnapshot(vm.ref, s2.ref);
  }
});
