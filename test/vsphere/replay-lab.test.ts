/**
 * The vSphere client against SOAP answers recorded from OUR lab (fixtures/vsphere/lab-*.xml,
 * made by test/vsphere/capture-lab.ts), without a lab: paging without maxObjects, a config denied
 * through missingSet, a datacenter inside a folder.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VCenter, methods, preflight } from '../../src/vsphere/index.ts';
import { fixture, startReplay, type ReplayOptions } from './replay-server.ts';
import { str } from '../../src/vsphere/convert.ts';

async function replayed(o: ReplayOptions) {
  const r = await startReplay(o);
  const vc = await VCenter.connect({ server: r.url, user: 'vmlift', password: 'secret', trust: { thumbprint: r.thumbprint }, timeoutMs: 10_000 })
    .catch(async (e) => { await r.close(); throw e; });
  return { r, vc, done: async () => { await vc.close(); await r.close(); } };
}
const tokenOf = (file: string) => /<token>([^<]+)<\/token>/.exec(fixture(file))![1]!;

test('lab recording: a RetrievePropertiesEx answer paged without maxObjects is followed token by token to the last page', async () => {
  const { r, vc, done } = await replayed({ answers: { RetrievePropertiesEx: 'lab-paged-1.xml', ContinueRetrievePropertiesEx: ['lab-paged-2.xml', 'lab-paged-3.xml'] } });
  try {
    const objs = await methods.retrieveProperties(vc.session, [methods.objectsSpec([{ type: 'VirtualMachine', value: 'vm-36' }], [{ type: 'VirtualMachine', pathSet: ['name'] }])]);
    assert.deepEqual(objs.map((o) => o.obj.value), ['vm-36', 'vm-39', 'vm-43', 'vm-46', 'vm-48']);
    assert.deepEqual(objs.map((o) => str(o.props['name'])), ['two-disks', 'shape-snapshot', 'shape-independent', 'shape-vmx04', 'vCLS-4c2b7e1d-9a3f-4d6e-8b5c-1f0a2e3d4c5b']);
    assert.doesNotMatch(r.requests.find((q) => q.op === 'RetrievePropertiesEx')!.body, /maxObjects/, 'no maxObjects was asked for');
    const cont = r.requests.filter((q) => q.op === 'ContinueRetrievePropertiesEx');
    assert.equal(cont.length, 2);
    assert.match(cont[0]!.body, new RegExp(`<token>${tokenOf('lab-paged-1.xml')}</token>`));
    assert.match(cont[1]!.body, new RegExp(`<token>${tokenOf('lab-paged-2.xml')}</token>`));
  } finally { await done(); }
});

test('lab recording: a VM whose config is denied (missingSet NoPermission) fails preflight naming System.Read and the fix', async () => {
  const { vc, done } = await replayed({ answers: { RetrievePropertiesEx: (body) => (/HostSystem/.test(body) ? 'lab-host.xml' : 'lab-vm-config-denied.xml') } });
  try {
    const vm = await vc.vm('vm-51');
    assert.equal(vm.name, 'vm-0001');
    assert.equal(vm.disks.length, 0);
    assert.ok(vm.unreadable?.some((m) => m.path === 'config.hardware.device' && m.fault === 'NoPermission' && m.privilege === 'System.Read'), JSON.stringify(vm.unreadable));
    const r = preflight(vm);
    const bad = r.checks.filter((c) => !c.ok);
    assert.deepEqual(bad.map((c) => c.name), ['readable']);
    assert.match(bad[0]!.message, /config\.hardware\.device[^;(]* \(NoPermission: privilege System\.Read\)/);
    assert.match(bad[0]!.fix!, /grant the vmlift user System\.Read on vm-0001/);
  } finally { await done(); }
});

test('lab recording: the inventory of a datacenter inside a folder names it by its path, the dcPath of disk URLs', async () => {
  const { vc, done } = await replayed({ answers: { CreateContainerView: 'lab-dc-folder-view.xml', RetrievePropertiesEx: 'lab-dc-folder-inventory.xml' } });
  try {
    const inv = await vc.inventory();
    assert.deepEqual(inv.datacenters, ['F0/DC0']);
    assert.equal(inv.vms.length, 6);
    assert.ok(inv.vms.every((v) => v.datacenter === 'F0/DC0'));
    const vm = inv.vms.find((v) => v.name === 'vm-0001')!;
    const { url } = vc.diskUrl(vm.disks[0]!, vm.datacenter!);
    assert.match(url, /\/folder\/vm-0001\/vm-0001-flat\.vmdk\?dcPath=F0%2FDC0&dsName=LocalDS_0$/);
  } finally { await done(); }
});
