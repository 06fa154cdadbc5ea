/**
 * The inventory against a lab that behaves like a real vCenter where it matters: pages without
 * maxObjects, properties denied through missingSet, a datacenter inside a folder, disks added,
 * moved and removed through ReconfigVM_Task deviceChange.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { labFixture, connect, vmlift, labEnv, folderRead } from './helpers.ts';
import { reconfigDisks } from './device-change.ts';
import type { Lab } from '../../lab/lab.ts';
import { methods, type VCenter } from '../../src/vsphere/index.ts';
import { vcenterService, httpDiskOpener } from '../../src/cli/wiring.ts';
import { silentLogger } from '../../src/util/log.ts';
import { UserError } from '../../src/util/errors.ts';

const MiB = 1 << 20;
let fx: Awaited<ReturnType<typeof labFixture>>;
let lab: Lab;
let vc: VCenter;

before(async () => { fx = await labFixture({ vms: 4, diskMb: 16 }); lab = fx.lab; vc = await connect(lab); });
after(async () => { await vc?.close(); await fx?.cleanup(); });

test('without maxObjects the PropertyCollector pages, and every page is collected; maxObjects is honoured', async (t) => {
  await lab.pageSize(3);
  t.after(() => lab.pageSize(100));
  const view = await methods.createContainerView(vc.session, ['VirtualMachine']);
  try {
    let rt = vc.roundTrips;
    const objs = await methods.retrieveProperties(vc.session, [methods.viewSpec(view, [{ type: 'VirtualMachine', pathSet: ['name'] }])]);
    assert.deepEqual(objs.map((o) => String(o.props['name'].$value ?? o.props['name'])).sort(), lab.vms.map((v) => v.name).sort(),
      'every VM, also those after the first page (ContinueRetrievePropertiesEx followed)');
    assert.equal(vc.roundTrips - rt, Math.ceil(lab.vms.length / 3), 'RetrievePropertiesEx, then ContinueRetrievePropertiesEx per page of 3');
    rt = vc.roundTrips;
    const two = await methods.retrieveProperties(vc.session, [methods.viewSpec(view, [{ type: 'VirtualMachine', pathSet: ['name'] }])], 2);
    assert.equal(two.length, lab.vms.length);
    assert.equal(vc.roundTrips - rt, Math.ceil(lab.vms.length / 2), 'pages of maxObjects=2');
  } finally {
    await methods.destroyView(vc.session, view);
  }
  const rt = vc.roundTrips;
  const inv = await vc.inventory();
  assert.deepEqual(inv.vms.map((v) => v.name).sort(), lab.vms.map((v) => v.name).sort());
  assert.ok(inv.vms.every((v) => v.disks.length > 0 && v.datacenter === 'DC0'), 'facts of every page are complete');
  assert.ok(vc.roundTrips - rt >= 2 + Math.ceil(lab.vms.length / 3), `paged inventory: ${vc.roundTrips - rt} round trips`);
});

test('a VM whose config the user may not read: preflight names the privilege and the fix; the snapshot-disk reader refuses it instead of "0 disks"', async (t) => {
  const name = 'vm-0002';
  const ref = lab.vm(name).moref;
  await lab.denyProperty(name, 'config', 'System.Read');
  t.after(() => lab.allowAll());

  const r = await vc.preflight(name);
  const readable = r.checks.find((c) => c.name === 'readable')!;
  assert.equal(r.ok, false);
  assert.equal(readable.ok, false);
  assert.match(readable.message, /config\.hardware\.device[^;(]* \(NoPermission: privilege System\.Read\)/);
  assert.match(readable.fix!, /grant the vmlift user System\.Read on vm-0002/);
  assert.equal((await vc.vm(name)).disks.length, 0, 'vCenter said nothing of the disks');

  const cli = await vmlift(['vc', 'preflight', name], labEnv(lab));
  assert.equal(cli.code, 1);
  assert.match(cli.stdout, /FAIL\s+readable/);
  assert.match(cli.stdout, /fix: grant the vmlift user System\.Read on vm-0002/);

  // The engine's reader of a snapshot's disks (the cycle's step 3) meets the same denial on the snapshot.
  const port = vcenterService(vc);
  const snap = await vc.createSnapshot(ref, 'vmlift-test', { quiesce: false });
  try {
    await assert.rejects(port.snapshotDisks(ref, snap), (e: unknown) => {
      assert.ok(e instanceof UserError, String(e));
      assert.equal(e.code, 'VC_UNREADABLE');
      assert.match(e.message, new RegExp(`config\\.hardware\\.device[^;(]* \\(NoPermission: privilege System\\.Read\\) of snapshot ${snap.ref} of vm-0002, so its disks are unknown`));
      assert.match(e.fix ?? '', /grant the vmlift user System\.Read on vm-0002/);
      return true;
    });
    await lab.allowAll();
    assert.deepEqual((await port.snapshotDisks(ref, snap)).map((d) => d.key), [2000], 'readable again once allowed');
  } finally {
    await vc.removeSnapshot(ref, snap.ref);
  }
});

test('ReconfigVM_Task deviceChange adds, moves and removes disks on the lab; refused while the VM has snapshots', async () => {
  const name = 'vm-0003';
  const ref = lab.vm(name).moref;
  await reconfigDisks(vc, ref, [{ op: 'add', controllerKey: 1000, unitNumber: 1, capacity: 8 * MiB }]);
  let vm = await vc.vm(name);
  const added = vm.disks.find((d) => d.key === 2001);
  assert.ok(added, JSON.stringify(vm.disks.map((d) => d.key)));
  assert.deepEqual([added.capacity, added.busId], [8 * MiB, 'scsi0:1']);
  assert.ok(added.uuid && added.uuid !== vm.disks[0]!.uuid, 'a new disk has its own backing UUID');
  let disks = await lab.refreshDisks(name);
  assert.deepEqual(disks.map((d) => [d.key, d.unit]), [[2000, 0], [2001, 1]]);
  assert.ok((await lab.read(name, 2001, 0, 4096)).some((b) => b !== 0), 'the new disk holds data');

  await reconfigDisks(vc, ref, [{ op: 'move', key: 2001, controllerKey: 1000, unitNumber: 3 }]);
  vm = await vc.vm(name);
  assert.deepEqual(vm.disks.map((d) => [d.key, d.busId, d.uuid]), [[2000, 'scsi0:0', vm.disks[0]!.uuid], [2001, 'scsi0:3', added.uuid]], 'same key and UUID, new unit');
  disks = await lab.refreshDisks(name);
  assert.deepEqual(disks.map((d) => [d.key, d.unit]), [[2000, 0], [2001, 3]]);

  await assert.rejects(reconfigDisks(vc, ref, [{ op: 'move', key: 2001, controllerKey: 1000, unitNumber: 0 }]), /unit 0 on SCSI bus 0 of VM vm-0003 is not free/);
  await reconfigDisks(vc, ref, [{ op: 'remove', key: 2001 }]);
  assert.deepEqual((await vc.vm(name)).disks.map((d) => d.key), [2000]);
  assert.deepEqual((await lab.refreshDisks(name)).map((d) => d.key), [2000]);

  const snap = lab.vm('shape-snapshot');
  await assert.rejects(reconfigDisks(vc, snap.moref, [{ op: 'add', controllerKey: 1000, unitNumber: 1, capacity: 8 * MiB }]), /has snapshots/);
  assert.deepEqual((await vc.vm(snap.name)).disks.map((d) => d.key), [2000]);
});

test('a datacenter inside a folder: its inventory path is the dcPath; vc ls shows it; a disk read through /folder is bit-identical', async () => {
  const f2 = await labFixture({ vms: 1, diskMb: 8, dcFolder: true });
  const lab2 = f2.lab;
  const vc2 = await connect(lab2);
  try {
    assert.equal(lab2.datacenterPath, 'F0/DC0');
    const inv = await vc2.inventory();
    assert.deepEqual(inv.datacenters, ['F0/DC0']);
    assert.ok(inv.vms.every((v) => v.datacenter === 'F0/DC0'), JSON.stringify(inv.vms.map((v) => v.datacenter)));

    const ls = await vmlift(['vc', 'ls'], labEnv(lab2));
    assert.equal(ls.code, 0, ls.stderr);
    assert.match(ls.stdout, /DATACENTER/);
    assert.match(ls.stdout.split('\n').find((l) => l.startsWith('vm-0001'))!, /F0\/DC0\s*$/);

    const vm = lab2.vm('vm-0001');
    const disk = vm.disks[0]!;
    const snap = await vc2.createSnapshot(vm.moref, 'vmlift-folder', { quiesce: false });
    try {
      await lab2.write(vm.name, disk.key, 0, Buffer.alloc(64 << 10, 0x5a)); // after the snapshot: not in its image
      const want = createHash('sha256').update(await lab2.read(vm.name, disk.key, 0, disk.capacity, snap.ref)).digest('hex');
      const port = vcenterService(vc2);
      const [sd] = await port.snapshotDisks(vm.moref, snap);
      const src = await httpDiskOpener(vc2, port, { thumbprint: lab2.thumbprint }, 2 * MiB, silentLogger).open(vm.moref, snap, sd!);
      try {
        assert.match(src.uri, /dcPath=F0%2FDC0/);
        const h = createHash('sha256');
        for (let off = 0; off < src.capacity; off += 2 * MiB) h.update(await src.read(off, Math.min(2 * MiB, src.capacity - off)));
        assert.equal(h.digest('hex'), want, 'the image read over HTTP is the snapshot\'s disk, bit for bit');
      } finally {
        await src.close();
      }
      // The bare name is not a path vCenter knows for a datacenter in a folder.
      const { url, cookie } = vc2.diskUrl({ file: sd!.file! }, 'DC0');
      assert.equal((await folderRead(lab2, url, cookie, 0, 512)).status, 404);
    } finally {
      await vc2.removeSnapshot(vm.moref, snap.ref);
    }
  } finally {
    await vc2.close();
    await f2.cleanup();
  }
});
