/** vmlift pointed straight at a standalone ESXi host: the lab in ESXi mode (govmomi's ESX model, HostAgent). */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect, folderRead, labEnv, vmlift } from './helpers.ts';
import { startRig, settings, liveSha, imageSha, guestWrites, type EngineRig } from '../engine/harness.ts';
import { VCenter, type VmInfo } from '../../src/vsphere/index.ts';
import type { Lab } from '../../lab/lab.ts';

let rig: EngineRig;
let lab: Lab;
let vc: VCenter;

before(async () => { rig = await startRig({ vms: 3, diskMb: 32, esx: true }); lab = rig.lab; vc = await connect(lab); });
after(async () => { await vc?.close(); await rig?.close(); });

test('the ESXi lab answers as hostd: HostAgent, ha-datacenter, root, numeric VM ids; vmlift connects with a pinned thumbprint', async () => {
  assert.equal(lab.apiType, 'HostAgent');
  assert.equal(lab.datacenter, 'ha-datacenter');
  assert.equal(lab.user, 'root');
  const about = vc.session.content.about;
  assert.equal(about.apiType, 'HostAgent');
  assert.match(about.fullName, /ESXi/);
  assert.equal(vc.session.isHostAgent, true);
  assert.equal(vc.session.serverLabel, 'ESXi host');
  assert.equal(vc.session.content.sessionManager.value, 'ha-sessionmgr');
  assert.ok(lab.vms.every((v) => /^\d+$/.test(v.moref)), `VM ids ${lab.vms.map((v) => v.moref).join(', ')}`);

  await assert.rejects(VCenter.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint: Array(32).fill('00').join(':') }, timeoutMs: 10_000 }),
    (e: Error & { code?: string }) => e.code === 'VC_THUMBPRINT');
  await assert.rejects(VCenter.connect({ server: lab.url, user: 'administrator@vsphere.local', password: lab.password, trust: { thumbprint: lab.thumbprint }, timeoutMs: 10_000 }),
    (e: Error & { code?: string }) => e.code === 'VC_LOGIN' && /^ESXi host https:\/\/127\.0\.0\.1:\d+\/sdk rejected/.test(e.message));
});

test('the lab controls work on the host: expired sessions make vmlift log in again, an injected snapshot fault is a clear task failure', async () => {
  const relogins = vc.session.relogins;
  assert.ok(await lab.expireSessions() >= 1);
  assert.equal((await vc.inventory()).vms.length, lab.vms.length);
  assert.equal(vc.session.relogins, relogins + 1, 'the expired hostd session was replaced');
  await lab.injectFault('createSnapshot');
  await assert.rejects(vc.createSnapshot(lab.vm('vm-0003').moref, 'vmlift-fault', { quiesce: false }),
    (e: Error & { code?: string }) => e.code === 'VC_TASK_FAILED' && /injected by the lab/.test(e.message));
  assert.equal((await vc.snapshots('vm-0003')).snapshots.length, 0);
});

test('vc ls lists the host\'s VMs by their numeric ids on ha-host, with no vCLS agent; vc show takes the id', async () => {
  const r = await vmlift(['vc', 'ls', '--json'], labEnv(lab));
  assert.equal(r.code, 0, r.stderr);
  const vms = JSON.parse(r.stdout) as VmInfo[];
  assert.deepEqual(vms.map((v) => v.name).sort(), lab.vms.map((v) => v.name).sort());
  assert.ok(!vms.some((v) => v.systemVm), 'a standalone host runs no vSphere Cluster Services');
  for (const v of vms) {
    assert.equal(v.ref, lab.vm(v.name).moref);
    assert.match(v.ref, /^\d+$/);
    assert.equal(v.host?.ref, 'ha-host');
    assert.equal(v.datacenter, 'ha-datacenter');
  }
  const table = await vmlift(['vc', 'ls'], labEnv(lab));
  assert.match(table.stdout, /two-disks\s+\d+\s+poweredOn/);

  const id = lab.vm('vm-0001').moref;
  const show = await vmlift(['vc', 'show', id], labEnv(lab));
  assert.equal(show.code, 0, show.stderr);
  assert.match(show.stdout, new RegExp(`^vm-0001 \\(${id}\\)`));
  assert.match(show.stdout, /datacenter:\s+ha-datacenter/);
  // One id lookup, not an inventory pass: RetrievePropertiesEx for the VM and for its host.
  const rt = vc.roundTrips;
  assert.equal((await vc.vm(id)).name, 'vm-0001');
  assert.equal(vc.roundTrips - rt, 2);
  // A vCenter-style id names nothing on a host.
  const gone = await vmlift(['vc', 'show', `vm-${id}`, '--json'], labEnv(lab));
  assert.equal(gone.code, 1);
  assert.equal(JSON.parse(gone.stdout).error.code, 'VC_VM_NOT_FOUND');
  assert.match(JSON.parse(gone.stdout).error.message, /^the ESXi host has no virtual machine named "vm-\d+"/);
});

test('preflight, CBT enable (with its stun), snapshots, changed areas and /folder with dcPath=ha-datacenter work against the host', async () => {
  const pre = await vmlift(['vc', 'preflight', 'vm-0001'], labEnv(lab));
  assert.equal(pre.code, 0, pre.stdout + pre.stderr);
  assert.match(pre.stdout, /preflight of vm-0001: OK/);
  const bad = await vmlift(['vc', 'preflight', 'shape-snapshot'], labEnv(lab));
  assert.equal(bad.code, 1);
  assert.match(bad.stdout, /FAIL\s+snapshots: .*"before-upgrade"/);

  const cbt = await vmlift(['vc', 'cbt', 'enable', 'vm-0001', '--json'], labEnv(lab));
  assert.equal(cbt.code, 0, cbt.stderr);
  assert.deepEqual({ ...JSON.parse(cbt.stdout), settings: undefined }, { vm: 'vm-0001', changed: true, stunned: true, changeTrackingEnabled: true, settings: undefined });

  const v = lab.vm('vm-0001');
  const d = v.disks[0]!;
  const s1 = await vc.createSnapshot(v.moref, 'vmlift-esx-1', { quiesce: false });
  const id1 = (await vc.snapshotDisks(s1.ref)).find((x) => x.key === d.key)!.changeId!;
  assert.match(id1, /\/\d+$/);
  const writes = [{ offset: 3 << 20, length: 128 << 10 }, { offset: 20 << 20, length: 64 << 10 }];
  for (const w of writes) await lab.write(v.name, d.key, w.offset, randomBytes(w.length));
  const s2 = await vc.createSnapshot(v.moref, 'vmlift-esx-2', { quiesce: false });
  const changed = await vc.changedAreas(v.moref, s2.ref, d.key, id1, d.capacity);
  for (const w of writes) {
    assert.ok(changed.areas.some((a) => a.offset <= w.offset && a.offset + a.length >= w.offset + w.length), `write at ${w.offset} is inside the areas`);
  }
  assert.ok(changed.bytes <= 8 * (192 << 10), `false positives bounded: ${changed.bytes} bytes reported for 192 KiB written`);

  const { url, cookie } = vc.diskUrl({ file: d.file }, 'ha-datacenter');
  assert.match(url, /dcPath=ha-datacenter/);
  const head = await folderRead(lab, url, cookie, 0, 4096);
  assert.equal(head.status, 206);
  assert.equal((await folderRead(lab, url, undefined, 0, 16)).status, 401, 'the host wants the session cookie too');
  assert.ok(head.body.equals(await lab.read(v.name, d.key, 0, 4096, s1.ref)), 'the base file is the first snapshot\'s data');
  assert.equal((await folderRead(lab, vc.diskUrl({ file: d.file }, 'DC0').url, cookie, 0, 16)).status, 404, 'a vCenter datacenter name is no path on the host');
  assert.equal((await folderRead(lab, url.replace('dcPath=ha-datacenter&', ''), cookie, 0, 16)).status, 206, 'hostd takes the URL without dcPath too');

  await vc.removeSnapshot(v.moref, s2.ref);
  await vc.removeSnapshot(v.moref, s1.ref);
  assert.equal((await vc.snapshots(v.moref)).snapshots.length, 0);
});

test('vc changed-areas, vc snapshots --sweep and vc cbt disable work against the host', async () => {
  const env = labEnv(lab);
  const on = await vmlift(['vc', 'cbt', 'enable', 'vm-0003'], env);
  assert.equal(on.code, 0, on.stderr);
  const r = await vmlift(['vc', 'changed-areas', 'vm-0003', '--disk', '2000', '--change-id', '*', '--json'], env);
  assert.equal(r.code, 0, r.stderr);
  const areas = JSON.parse(r.stdout) as { areas: { offset: number; length: number }[]; bytes: number; snapshotChangeId: string };
  assert.ok(areas.areas.some((a) => a.offset === 0 && a.length >= 1 << 20), 'the data in the first MiB is allocated');
  assert.match(areas.snapshotChangeId, /\/\d+$/);
  const v = lab.vm('vm-0003');
  await vc.createSnapshot(v.moref, 'vmlift-leftover', { quiesce: false });
  const sweep = await vmlift(['vc', 'snapshots', 'vm-0003', '--sweep', '--json'], env);
  assert.equal(sweep.code, 0, sweep.stderr);
  assert.deepEqual(JSON.parse(sweep.stdout).swept.removed, ['vmlift-leftover']);
  assert.deepEqual(JSON.parse(sweep.stdout).snapshots, [], 'the temporary query snapshot and the leftover are gone');
  const off = await vmlift(['vc', 'cbt', 'disable', 'vm-0003', '--json'], env);
  assert.equal(off.code, 0, off.stderr);
  assert.equal((await vc.vm(v.moref)).changeTrackingEnabled, false);
});

test('a host with the free vSphere Hypervisor license: reads work, CBT enable is VC_HOST_LICENSE naming the license and the fix', async (t) => {
  await lab.setEsxLicense('free');
  t.after(() => lab.setEsxLicense('licensed'));
  const ls = await vmlift(['vc', 'ls'], labEnv(lab));
  assert.equal(ls.code, 0, ls.stderr);
  const r = await vmlift(['vc', 'cbt', 'enable', 'vm-0002', '--json'], labEnv(lab));
  assert.equal(r.code, 1);
  const { error } = JSON.parse(r.stdout);
  assert.equal(error.code, 'VC_HOST_LICENSE');
  assert.match(error.message, /ESXi host refused ReconfigVM_Task: its license makes the vSphere API read-only/);
  assert.match(error.fix, /paid vSphere edition/);
  assert.match(r.stderr, /read-only[\s\S]*fix: give the ESXi host a license/);
  const vm = await vc.vm('vm-0002');
  assert.equal(vm.changeTrackingEnabled, false, 'nothing was changed');

  // A job meets the same refusal at its CBT step, with the same code and fix, and no retry.
  rig.engine.createJob({ id: 'free', vmRef: vm.ref, settings: settings() });
  rig.engine.start('free');
  await rig.engine.runNow('free');
  const job = rig.engine.getJob('free');
  assert.equal(job.state, 'error');
  assert.equal(job.error?.step, 'cbt');
  assert.equal(job.error?.code, 'VC_HOST_LICENSE');
  assert.match(job.error?.fix ?? '', /free vSphere Hypervisor license allows reads only/);
  assert.equal(job.error?.attempts, 1, 'a license refusal is not retried');
  await rig.engine.delete('free', {});
});

test('a job against the host: full, incremental and final cycles; every image is bit-identical (SHA-256) to its snapshot; no snapshot left', async () => {
  const { engine, rx } = rig;
  const vm = lab.vm('two-disks');
  for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 20);
  engine.createJob({ id: 'esx', vmRef: vm.moref, settings: settings() });
  engine.start('esx');
  const shas = () => Promise.all(vm.disks.map((d) => liveSha(lab, vm.name, d.key, d.capacity)));
  const check = async (kind: string, expected: string[]) => {
    const job = engine.getJob('esx');
    assert.notEqual(job.state, 'error', JSON.stringify(job.error));
    const [c] = rig.state.listCycles('esx');
    assert.equal(c!.kind, kind);
    for (const [i, d] of vm.disks.entries()) {
      assert.equal(await imageSha(rx, job.sourceId, c!.imageId!, i, d.capacity), expected[i], `${kind} image, disk ${d.key}`);
    }
    return c!;
  };

  const e1 = await shas();
  await engine.runNow('esx');
  await check('full', e1);

  const written = await guestWrites(lab, vm.name, vm.disks[0]!.key, vm.disks[0]!.capacity, 8);
  const e2 = await shas();
  engine.requestSync('esx');
  await engine.runNow('esx');
  const c2 = await check('incremental', e2);
  assert.ok(c2.changedBytes <= written, `CBT areas ${c2.changedBytes} <= written ${written}`);

  await guestWrites(lab, vm.name, vm.disks[1]!.key, vm.disks[1]!.capacity, 4);
  const e3 = await shas();
  engine.complete('esx');
  await engine.runNow('esx');
  await check('final', e3);
  assert.equal(engine.getJob('esx').state, 'completed');
  assert.equal((await vc.snapshots(vm.moref)).snapshots.length, 0, 'no snapshot left on the VM');
});
