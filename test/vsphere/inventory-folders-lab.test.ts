/**
 * The VM's folder in the inventory facts, against a lab with VMs in nested VM folders and one in a
 * vApp (startLab({ folders: true })): the path below the datacenter's vm folder, read in the same
 * pass (round trips do not grow with the VMs), also with the datacenter inside a folder.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { labFixture, connect, vmlift, labEnv } from './helpers.ts';
import type { VCenter } from '../../src/vsphere/index.ts';

const fixtures: { cleanup: () => Promise<void> }[] = [];
const clients: VCenter[] = [];
after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  for (const f of fixtures) await f.cleanup();
});

const expected: Record<string, { folder: string; vApp: string | null }> = {
  'web-01': { folder: 'Prod/Web', vApp: null }, 'web-02': { folder: 'Prod/Web', vApp: null },
  'db-01': { folder: 'Prod/Db', vApp: null }, 'test-01': { folder: 'Test', vApp: null },
  'shop-app': { folder: 'Prod', vApp: 'shop' },
  'two-disks': { folder: '', vApp: null }, 'vm-0001': { folder: '', vApp: null },
};

test('VMs in nested folders and a vApp carry their folder path; VMs of the vm folder itself ""; the round trips stay three', async () => {
  const fx = await labFixture({ vms: 2, diskMb: 8, folders: true, pageSize: 0 });
  fixtures.push(fx);
  const vc = await connect(fx.lab);
  clients.push(vc);
  assert.equal(fx.lab.vm('web-01').folder, 'Prod/Web', 'lab.json says where the lab put the VM');
  const rt = vc.roundTrips;
  const inv = await vc.inventory();
  assert.equal(vc.roundTrips - rt, 3, 'CreateContainerView, RetrievePropertiesEx, DestroyView: no round trip per VM or folder');
  assert.equal(inv.vms.length, fx.lab.vms.length, 'the vApp member is found too');
  for (const [name, want] of Object.entries(expected)) {
    const vm = inv.vms.find((v) => v.name === name);
    assert.ok(vm, `${name} is in the inventory`);
    assert.deepEqual({ folder: vm.folder, vApp: vm.vApp }, want, name);
    assert.equal(vm.datacenter, 'DC0', `${name}: datacenter`);
  }
  assert.equal(inv.vms.filter((v) => v.folder === 'Prod/Web').length, 2);

  // The same by name (fetchVm: a name-only inventory, then the VM's full facts).
  const one = await vc.vm('shop-app');
  assert.deepEqual({ folder: one.folder, vApp: one.vApp }, expected['shop-app']);

  // `vmlift vc ls` shows the folder and filters by it (the folder and everything below it).
  const ls = await vmlift(['vc', 'ls', '--json', '--folder', 'Prod'], labEnv(fx.lab));
  assert.equal(ls.code, 0, ls.stderr);
  const rows = JSON.parse(ls.stdout) as { name: string; folder: string }[];
  assert.deepEqual(rows.map((r) => r.name).sort(), ['db-01', 'shop-app', 'web-01', 'web-02']);
  const web = await vmlift(['vc', 'ls', '--folder', '/Prod/Web/'], labEnv(fx.lab));
  assert.equal(web.code, 0, web.stderr);
  assert.match(web.stdout, /FOLDER/);
  assert.match(web.stdout, /web-01 .*Prod\/Web/);
  assert.doesNotMatch(web.stdout, /db-01|two-disks/);
  const none = await vmlift(['vc', 'ls', '--folder', 'Nowhere'], labEnv(fx.lab));
  assert.notEqual(none.code, 0, 'a folder no VM is in is an error, not an empty list');
  assert.match(none.stderr, /Nowhere/);
});

test('with the datacenter inside a folder (F0/DC0), the VM folder path still starts below its vm folder', async () => {
  const fx = await labFixture({ vms: 1, diskMb: 8, folders: true, dcFolder: true });
  fixtures.push(fx);
  const vc = await connect(fx.lab);
  clients.push(vc);
  const inv = await vc.inventory();
  const web = inv.vms.find((v) => v.name === 'web-01')!;
  assert.equal(web.folder, 'Prod/Web');
  assert.equal(web.datacenter, 'F0/DC0');
  assert.equal(inv.vms.find((v) => v.name === 'shop-app')!.folder, 'Prod');
  assert.equal(inv.vms.find((v) => v.name === 'vm-0001')!.folder, '');
});
