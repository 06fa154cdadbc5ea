/**
 * Captures SOAP answers of OUR lab vCenter into fixtures/vsphere/lab-*.xml, for replay tests that
 * need no lab (test/vsphere/replay-lab.test.ts). Run again after a lab change that alters them:
 *   VMLIFT_FROM_SOURCE=1 node --import tsx test/vsphere/capture-lab.ts
 * Cases: a RetrievePropertiesEx answer paged with a token (no maxObjects), a VM whose config the
 * user may not read (missingSet NoPermission), the inventory of a lab whose datacenter sits in a folder.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startLab, type Lab } from '../../lab/lab.ts';
import { VCenter, methods } from '../../src/vsphere/index.ts';
import { startRecorder, type Exchange } from './recorder.ts';
import { FIXTURES } from './replay-server.ts';

async function withLab(o: { vms: number; pageSize?: number; dcFolder?: boolean }, fn: (lab: Lab, vc: VCenter, ex: Exchange[]) => Promise<void>) {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-capture-'));
  const lab = await startLab({ dir, vms: o.vms, diskMb: 8, pageSize: o.pageSize, dcFolder: o.dcFolder });
  const rec = await startRecorder(lab);
  const vc = await VCenter.connect({ server: rec.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } });
  try {
    await fn(lab, vc, rec.exchanges);
  } finally {
    await vc.close(); await rec.close(); await lab.stop(); rmSync(dir, { recursive: true, force: true });
  }
}

const NOTE = (what: string) => `<!-- Recorded from the vmlift lab vCenter (lab/, govmomi's simulator + vmlift's front) by test/vsphere/capture-lab.ts: ${what} -->\n`;
function save(name: string, what: string, ex: Exchange | undefined): void {
  if (!ex) throw new Error(`nothing recorded for ${name}`);
  // A view's id embeds the session's key: replaced, so no session id of the lab is kept.
  const xml = ex.response.replace(/^<\?xml[^>]*\?>\s*/, '').replace(/session\[[0-9a-f-]+\][0-9a-f-]+/g, 'session[00000000-0000-0000-0000-000000000000]view-1');
  writeFileSync(join(FIXTURES, name), `<?xml version="1.0" encoding="UTF-8"?>\n${NOTE(what)}${xml}\n`);
  process.stderr.write(`wrote fixtures/vsphere/${name} (${xml.length} bytes)\n`);
}
const last = (ex: Exchange[], op: string) => ex.filter((e) => e.op === op).at(-1);

// 1. Paged without maxObjects: the names of 5 VMs at 2 objects a page (a token on every page but the last).
await withLab({ vms: 0, pageSize: 2 }, async (_lab, vc, ex) => {
  const view = await methods.createContainerView(vc.session, ['VirtualMachine']);
  const start = ex.length;
  await methods.retrieveProperties(vc.session, [methods.viewSpec(view, [{ type: 'VirtualMachine', pathSet: ['name'] }])]);
  await methods.destroyView(vc.session, view);
  const pages = ex.slice(start).filter((e) => /RetrievePropertiesEx$/.test(e.op));
  save('lab-paged-1.xml', 'RetrievePropertiesEx of VM names without maxObjects, page size 2: first page and a token', pages[0]);
  save('lab-paged-2.xml', 'ContinueRetrievePropertiesEx: second page and a token', pages[1]);
  save('lab-paged-3.xml', 'ContinueRetrievePropertiesEx: last page, no token', pages[2]);
});

// 2. missingSet: vm-0001's config denied (lab.denyProperty), then the VM and its host read as vmlift does.
await withLab({ vms: 1 }, async (lab, vc, ex) => {
  await lab.denyProperty('vm-0001', 'config', 'System.Read');
  await vc.vm(lab.vm('vm-0001').moref);
  const reads = ex.filter((e) => e.op === 'RetrievePropertiesEx');
  save('lab-vm-config-denied.xml', 'RetrievePropertiesEx of vm-0001 after lab.denyProperty(vm-0001, config, System.Read): config.* in missingSet with NoPermission', reads.at(-2));
  save('lab-host.xml', 'RetrievePropertiesEx of the host of vm-0001 (name, config.product)', reads.at(-1));
});

// 3. A datacenter inside a folder (lab -dc-folder): the whole inventory in one page.
await withLab({ vms: 1, pageSize: 0, dcFolder: true }, async (_lab, vc, ex) => {
  await vc.inventory();
  save('lab-dc-folder-view.xml', 'CreateContainerView of the root folder (the inventory\'s view)', last(ex, 'CreateContainerView'));
  save('lab-dc-folder-inventory.xml', 'RetrievePropertiesEx of the inventory of a lab whose datacenter DC0 sits in folder F0', last(ex, 'RetrievePropertiesEx'));
});
