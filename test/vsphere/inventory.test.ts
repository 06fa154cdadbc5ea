import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { labFixture, connect, vmlift, labEnv } from './helpers.ts';
import type { Lab } from '../../lab/lab.ts';
import { methods, parseServiceVersions, preflight, systemVmKind, type VCenter, type VmInfo } from '../../src/vsphere/index.ts';

let fx: Awaited<ReturnType<typeof labFixture>>;
let lab: Lab;
let vc: VCenter;

before(async () => { fx = await labFixture({ vms: 6 }); lab = fx.lab; vc = await connect(lab); });
after(async () => { await vc?.close(); await fx?.cleanup(); });

test('inventory lists every VM with the right disk facts, in constant round trips', async () => {
  const before = vc.roundTrips;
  const inv = await vc.inventory();
  assert.equal(vc.roundTrips - before, 3, 'CreateContainerView + RetrievePropertiesEx + DestroyView');
  assert.deepEqual(inv.vms.map((v) => v.name).sort(), lab.vms.map((v) => v.name).sort());
  for (const lv of lab.vms) {
    const vm = inv.vms.find((v) => v.name === lv.name)!;
    assert.equal(vm.ref, lv.moref);
    assert.equal(vm.datacenter, lab.datacenter);
    assert.ok(vm.host && /^6\.5/.test(vm.host.version), `${vm.name} host version`);
    assert.equal(vm.disks.length, lv.disks.length);
    for (const ld of lv.disks) {
      const d = vm.disks.find((x) => x.key === ld.key)!;
      assert.ok(d, `${vm.name} disk ${ld.key}`);
      assert.equal(d.capacity, ld.capacity);
      // A VM with a snapshot writes to a delta (vm-000001.vmdk), as on vSphere.
      assert.equal(d.file, vm.snapshots.length ? ld.file.replace(/\.vmdk$/, '-000001.vmdk') : ld.file);
      assert.equal(d.controllerBus, ld.bus);
      assert.equal(d.unitNumber, ld.unit);
      assert.equal(d.busId, `scsi${ld.bus}:${ld.unit}`);
      assert.equal(d.datastore, ld.datastore);
      assert.equal(d.parents?.length ?? 0, vm.snapshots.length, 'a delta names its parent');
      assert.equal(d.backingType, 'VirtualDiskFlatVer2');
      assert.equal(d.compatibilityMode, null);
    }
  }
  const two = inv.vms.find((v) => v.name === 'two-disks')!;
  assert.deepEqual(two.disks.map((d) => [d.key, d.controllerType, d.busId, d.capacity]),
    [[2000, 'pvscsi', 'scsi0:0', 64 << 20], [2016, 'lsilogic', 'scsi1:0', 32 << 20]]);
  assert.equal(two.powerState, 'poweredOn');
  assert.equal(two.hardwareVersion, 'vmx-13');
  assert.equal(inv.vms.find((v) => v.name === 'shape-vmx04')!.hardwareVersion, 'vmx-04');
  assert.equal(inv.vms.find((v) => v.name === 'shape-independent')!.disks[0]!.diskMode, 'independent_persistent');
  const snap = inv.vms.find((v) => v.name === 'shape-snapshot')!;
  assert.equal(snap.snapshots.length, 1);
  assert.equal(snap.snapshots[0]!.name, 'before-upgrade');
  assert.equal(snap.currentSnapshot, snap.snapshots[0]!.ref);
  assert.equal(inv.vms.find((v) => v.name === 'vm-0003')!.powerState, 'poweredOff');
});

test('preflight fails with a fix for the snapshot, independent-disk and vmx-04 VMs, passes a plain VM', async () => {
  const cases: [string, string[], RegExp][] = [
    ['shape-snapshot', ['snapshots'], /before-upgrade/],
    ['shape-independent', ['independent-disks'], /independent_persistent/],
    // vCenter also says a vmx-04 VM cannot track changes (capability.changeTrackingSupported false)
    ['shape-vmx04', ['cbt-supported', 'hardware-version'], /vmx-04 is below vmx-07/],
  ];
  for (const [name, checks, msg] of cases) {
    const r = await vc.preflight(name);
    assert.equal(r.ok, false, name);
    const failed = r.checks.filter((c) => !c.ok);
    assert.deepEqual(failed.map((c) => c.name), checks, name);
    assert.match(failed[failed.length - 1]!.message, msg);
    for (const f of failed) assert.ok(f.fix && f.fix.length > 20, `${name}: ${f.name} has a fix`);
  }
  const ok = await vc.preflight('vm-0001');
  assert.equal(ok.ok, true);
  await assert.rejects(vc.enableCbt('shape-vmx04'), (e: Error) => /cannot enable CBT on shape-vmx04/.test(e.message));
});

test('CLI: vc ls --json, preflight exit code, and one clear message per failure', async () => {
  const env = labEnv(lab);
  const ls = await vmlift(['vc', 'ls', '--json'], env);
  assert.equal(ls.code, 0, ls.stderr);
  assert.equal(JSON.parse(ls.stdout).length, lab.vms.length);

  const pf = await vmlift(['vc', 'preflight', 'shape-independent'], env);
  assert.equal(pf.code, 1);
  assert.match(pf.stdout, /FAIL\s+independent-disks/);
  assert.match(pf.stdout, /fix: power off shape-independent and set the disk to Dependent mode/);

  const wrongPw = join(fx.dir, 'wrong-password');
  writeFileSync(wrongPw, 'not-the-password\n');
  const cases: [string, string[], Record<string, string | undefined>, RegExp][] = [
    ['wrong password', ['vc', 'ls'], { ...env, VMLIFT_PASSWORD_FILE: wrongPw }, /rejected the user name or password/],
    ['wrong thumbprint', ['vc', 'ls', '--thumbprint', 'AA'.repeat(32)], env, /does not match the pinned thumbprint/],
    ['unknown VM', ['vc', 'show', 'no-such-vm'], env, /no virtual machine named "no-such-vm"/],
    ['vCenter down', ['vc', 'ls', '--server', 'https://127.0.0.1:9/sdk'], env, /cannot reach vCenter at https:\/\/127\.0\.0\.1:9\/sdk: connection refused/],
    ['untrusted certificate', ['vc', 'ls'], { ...env, VMLIFT_THUMBPRINT: undefined }, /not trusted by the system CAs/],
  ];
  const results = await Promise.all(cases.map(([, args, e]) => vmlift(args, e)));
  cases.forEach(([what, , , re], i) => {
    const r = results[i]!;
    assert.notEqual(r.code, 0, `${what}: exit code`);
    assert.match(r.stderr, re, what);
    assert.equal(r.stderr.match(/error:/g)?.length, 1, `${what}: one message\n${r.stderr}`);
    assert.match(r.stderr, /fix: /, `${what}: a fix`);
    assert.doesNotMatch(r.stderr + r.stdout, new RegExp(lab.password), `${what}: password never printed`);
  });
});

test('ContinueRetrievePropertiesEx: a paged answer is collected whole', async () => {
  const view = await methods.createContainerView(vc.session, ['VirtualMachine']);
  try {
    const rt = vc.roundTrips;
    const objs = await methods.retrieveProperties(vc.session, [methods.viewSpec(view, [{ type: 'VirtualMachine', pathSet: ['name'] }])], 3);
    assert.equal(objs.length, lab.vms.length);
    assert.equal(vc.roundTrips - rt, Math.ceil(lab.vms.length / 3), 'one RetrievePropertiesEx, then ContinueRetrievePropertiesEx per page');
    assert.deepEqual(objs.map((o) => o.props['name'] && String(o.props['name'].$value ?? o.props['name'])).sort(), lab.vms.map((v) => v.name).sort());
  } finally {
    await methods.destroyView(vc.session, view);
  }
});

test('preflight refuses physical RDMs and ESXi below 4.0 (facts as vCenter reports them)', () => {
  const base: VmInfo = {
    ref: 'vm-1', name: 'db01', powerState: 'poweredOn', guestId: 'x', guestFullName: 'x', hardwareVersion: 'vmx-08', uuid: 'u',
    host: { ref: 'host-1', name: 'esx35', version: '3.5.0', build: '1' }, datacenter: 'DC', changeTrackingEnabled: false,
    ctkEnabled: false, consolidationNeeded: false, systemVm: null, unreadable: [], changeTrackingSupported: null, snapshots: [], currentSnapshot: null, ctkConfig: {},
    disks: [{ key: 2001, label: 'Hard disk 2', controllerType: 'lsilogic', controllerBus: 0, unitNumber: 1, busId: 'scsi0:1',
      capacity: 1 << 30, backingType: 'VirtualDiskRawDiskMappingVer1', file: '[ds] db01/db01_1.vmdk', datastore: 'ds',
      diskMode: 'persistent', compatibilityMode: 'physicalMode', changeId: null, uuid: null, ctkEnabled: false }],
  };
  const r = preflight(base);
  assert.equal(r.ok, false);
  assert.deepEqual(r.checks.filter((c) => !c.ok).map((c) => c.name), ['esxi-version', 'physical-rdm']);
  assert.match(r.checks.find((c) => c.name === 'physical-rdm')!.fix!, /virtual compatibility/);
  const fixed = preflight({ ...base, host: { ...base.host!, version: '7.0.3' }, disks: [{ ...base.disks[0]!, compatibilityMode: 'virtualMode' }] });
  assert.equal(fixed.ok, true);
  // vCenter's own word on CBT: false refuses with a fix; unknown (older vCenters) does not refuse
  const unsupported = preflight({ ...base, host: { ...base.host!, version: '7.0.3' }, disks: [], changeTrackingSupported: false });
  assert.deepEqual(unsupported.checks.filter((c) => !c.ok).map((c) => c.name), ['cbt-supported']);
  assert.match(unsupported.checks.find((c) => c.name === 'cbt-supported')!.fix!, /vmlift vc preflight db01/);
});

test('vSphere system VMs (vCLS agents) are marked in the inventory and in vc ls; application VMs are not', async () => {
  const inv = await vc.inventory();
  const vcls = inv.vms.filter((v) => v.systemVm);
  assert.deepEqual(vcls.map((v) => v.name), ['vCLS-4c2b7e1d-9a3f-4d6e-8b5c-1f0a2e3d4c5b']);
  assert.match(vcls[0]!.systemVm!, /vCLS/);
  assert.equal(systemVmKind('vCLS (2)'), vcls[0]!.systemVm, 'the 7.0U1 naming too');
  for (const name of ['vCLS', 'vCLS-backup-of-web', 'web-vCLS-1', 'two-disks']) assert.equal(systemVmKind(name), null, name);
  const ls = await vmlift(['vc', 'ls'], labEnv(lab));
  assert.equal(ls.code, 0, ls.stderr);
  assert.match(ls.stdout, /vCLS-4c2b7e1d-9a3f-4d6e-8b5c-1f0a2e3d4c5b \(system VM\)/);
  assert.doesNotMatch(ls.stdout, /two-disks \(system VM\)/);
});

test('inventory reads capability.changeTrackingSupported from vCenter', async () => {
  const inv = await vc.inventory();
  const vm = inv.vms.find((v) => v.name === 'two-disks')!;
  assert.equal(vm.changeTrackingSupported, true, 'the lab reports the capability as vCenter does');
  assert.equal(inv.vms.find((v) => v.name === 'shape-vmx04')!.changeTrackingSupported, false);
  assert.equal(preflight(vm).checks.find((c) => c.name === 'cbt-supported')!.ok, true);
});

test('CLI: --insecure warns and works; a config file replaces the flags', async () => {
  const ins = await vmlift(['vc', 'ls', '--insecure'], { ...labEnv(lab), VMLIFT_THUMBPRINT: undefined });
  assert.equal(ins.code, 0, ins.stderr);
  assert.match(ins.stderr, /warning: --insecure: the certificate of .* is NOT verified/);
  const cfg = join(fx.dir, 'vcenter.json');
  writeFileSync(cfg, JSON.stringify({ server: lab.url, user: lab.user, passwordFile: lab.passwordFile, thumbprint: lab.thumbprintSha1 }));
  const show = await vmlift(['vc', 'show', 'two-disks', '--json', '--config', cfg]);
  assert.equal(show.code, 0, show.stderr);
  assert.deepEqual(JSON.parse(show.stdout).disks.map((d: { busId: string }) => d.busId), ['scsi0:0', 'scsi1:0']);
});

test('CLI: lab write plays a guest write that the lab reads back', async () => {
  const f = join(fx.dir, 'payload');
  writeFileSync(f, Buffer.from('guest-bytes-0123456789'));
  const w = await vmlift(['lab', 'write', '--dir', fx.dir, 'vm-0004', '--disk', '2000', '--offset', '70000', '--length', '11', '--data-file', f, '--json']);
  assert.equal(w.code, 0, w.stderr);
  assert.deepEqual(JSON.parse(w.stdout), { vm: 'vm-0004', disk: 2000, offset: 70000, length: 11 });
  assert.equal((await lab.read('vm-0004', 2000, 70000, 11)).toString(), 'guest-bytes');
  const bad = await vmlift(['lab', 'write', '--dir', fx.dir, 'vm-0004', '--disk', '2000', '--offset', String(64 << 20), '--length', '1']);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /outside the disk/);
});

test('the session speaks the API version the lab lists at /sdk/vimServiceVersions.xml', async () => {
  const { Agent, request } = await import('undici');
  const agent = new Agent({ connect: { ca: lab.certPem } });
  try {
    const res = await request(`${lab.url}/vimServiceVersions.xml`, { dispatcher: agent });
    assert.equal(res.statusCode, 200);
    const listed = parseServiceVersions(await res.body.text());
    assert.ok(listed && /^\d+(\.\d+)+$/.test(listed), `listed ${listed}`);
    assert.equal(vc.session.apiVersion, listed);
  } finally {
    await agent.close();
  }
});
