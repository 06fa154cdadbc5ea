/**
 * Backing facts of snapshot disks as real vCenters send them (hand-written fixtures: a vSAN VM and a
 * delta chain), read through the real client without a lab, and the HTTP reader's refusal of both.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VCenter, methods } from '../../src/vsphere/index.ts';
import { arr, str } from '../../src/vsphere/convert.ts';
import { vcenterService, httpDiskOpener } from '../../src/cli/wiring.ts';
import { httpRefusal } from '../../src/source/http-datastore/index.ts';
import { UserError } from '../../src/util/errors.ts';
import { silentLogger } from '../../src/util/log.ts';
import { startReplay } from './replay-server.ts';

/** RetrievePropertiesEx answered by the object asked for: the snapshot's config, or the datastores. */
const byObject = (snapshot: string, datastore: string) => (body: string) => (/type="Datastore"/.test(body) ? datastore : snapshot);

async function replayed(snapshot: string, datastore: string) {
  const r = await startReplay({ answers: { RetrievePropertiesEx: byObject(snapshot, datastore) } });
  const vc = await VCenter.connect({ server: r.url, user: 'vmlift', password: 'secret', trust: { thumbprint: r.thumbprint }, timeoutMs: 10_000 })
    .catch(async (e) => { await r.close(); throw e; });
  return { r, vc, done: async () => { await vc.close(); await r.close(); } };
}

test('a vSAN disk at a snapshot: backingObjectId and datastore type read; the HTTP reader refuses it before any request', async () => {
  const { r, vc, done } = await replayed('snapshot-disks-vsan.xml', 'datastore-vsan.xml');
  try {
    const [d] = await vc.snapshotDisks('snapshot-51');
    assert.equal(d!.file, '[vsanDatastore] 3f6a2b65-7c1d-e9a0-5b4e-0050569a7d21/db02.vmdk');
    assert.equal(d!.backingObjectId, '4a6a2b65-0e8f-2c31-9d77-0050569a7d21');
    assert.equal(d!.datastoreRef, 'datastore-1042');
    assert.equal(d!.datastore, 'vsanDatastore');
    assert.equal(d!.datastoreType, 'vsan');
    assert.equal(d!.parents, undefined);
    assert.equal(d!.deltaDiskFormat, undefined);
    assert.equal(d!.capacity, 40 * 2 ** 30);
    assert.equal(d!.changeId, '52 7a 1c 9e 03 b4 5d 6f-8a 0b 2c 4d 6e 8f a1 b2/12');
    assert.equal(r.count('RetrievePropertiesEx'), 2, 'the snapshot config, then the datastores in one call');

    const port = vcenterService(vc);
    const snap = { ref: 'snapshot-51', name: 'vmlift-cycle-7' };
    const [sd] = await port.snapshotDisks('vm-61', snap);
    assert.equal(sd!.datastoreType, 'vsan');
    const before = r.requests.length;
    const opener = httpDiskOpener(vc, port, { thumbprint: r.thumbprint }, 2 << 20, silentLogger);
    await assert.rejects(opener.open('vm-61', snap, sd!), (e: unknown) => e instanceof UserError && e.code === 'HTTP_DS_OBJECT' &&
      e.message === 'disk [vsanDatastore] 3f6a2b65-7c1d-e9a0-5b4e-0050569a7d21/db02.vmdk is a vSAN object (object 4a6a2b65-0e8f-2c31-9d77-0050569a7d21), no flat file: the HTTP datastore transport cannot read it' &&
      e.fix === 'use --transport vddk or nbd, or set the VDDK libdir: connector init --vddk-libdir DIR');
    assert.equal(r.requests.length, before, 'refused before any request: no inventory, no /folder GET');
  } finally { await done(); }
});

test('a vSAN VM lists only the disk descriptor in layoutEx, with the object id', async () => {
  const r = await startReplay({ answers: { RetrievePropertiesEx: 'vm-vsan-layout.xml' } });
  const vc = await VCenter.connect({ server: r.url, user: 'vmlift', password: 'secret', trust: { thumbprint: r.thumbprint }, timeoutMs: 10_000 });
  try {
    const vm = await vc.vm('vm-61');
    assert.equal(vm.disks[0]!.backingObjectId, '4a6a2b65-0e8f-2c31-9d77-0050569a7d21');
    assert.equal(vm.disks[0]!.datastoreRef, 'datastore-1042');
    const [o] = await methods.retrieveProperties(vc.session, [methods.objectsSpec([{ type: 'VirtualMachine', value: 'vm-61' }], [{ type: 'VirtualMachine', pathSet: ['layoutEx'] }])]);
    const lx = o!.props['layoutEx'];
    const files = new Map(arr(lx.file).map((f: any) => [str(f.key), { name: str(f.name), type: str(f.type), obj: str(f.backingObjectId) }]));
    const chain = arr(arr(lx.disk)[0].chain);
    assert.equal(chain.length, 1);
    const units = arr(chain[0].fileKey).map((k) => files.get(str(k)));
    assert.deepEqual(units, [{ name: vm.disks[0]!.file, type: 'diskDescriptor', obj: '4a6a2b65-0e8f-2c31-9d77-0050569a7d21' }]);
    assert.ok(![...files.values()].some((f) => f.type === 'diskExtent'), 'no extent file on vSAN');
  } finally { await vc.close(); await r.close(); }
});

test('a snapshot third in its chain: each disk is a seSparse delta with two parents; the HTTP reader refuses it', async () => {
  const { vc, done } = await replayed('snapshot-disks-delta-chain.xml', 'datastore-vmfs.xml');
  try {
    const disks = await vc.snapshotDisks('snapshot-62');
    assert.deepEqual(disks.map((d) => [d.key, d.file, d.deltaDiskFormat, d.parents, d.datastore, d.datastoreType]), [
      [2000, '[ds-vmfs6] app01/app01-000002.vmdk', 'seSparseFormat', ['[ds-vmfs6] app01/app01-000001.vmdk', '[ds-vmfs6] app01/app01.vmdk'], 'ds-vmfs6', 'VMFS'],
      [2001, '[ds-vmfs6] app01/app01_1-000002.vmdk', 'seSparseFormat', ['[ds-vmfs6] app01/app01_1-000001.vmdk', '[ds-vmfs6] app01/app01_1.vmdk'], 'ds-vmfs6', 'VMFS'],
    ]);
    assert.equal(disks[0]!.changeId, '52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/81', 'the changeId is the top backing\'s');
    assert.equal(disks[0]!.uuid, '6000C290-1b2c-3d4e-5f60-71829a3b4c5d');

    const port = vcenterService(vc);
    const snap = { ref: 'snapshot-62', name: 'vmlift-cycle-9' };
    const sd = await port.snapshotDisks('vm-88', snap);
    const opener = httpDiskOpener(vc, port, { thumbprint: 'AA'.repeat(32) }, 2 << 20, silentLogger);
    await assert.rejects(opener.open('vm-88', snap, sd[0]!), (e: unknown) => e instanceof UserError && e.code === 'HTTP_DS_DELTA' &&
      e.message.startsWith('disk [ds-vmfs6] app01/app01-000002.vmdk is a delta disk (seSparseFormat) of snapshot vmlift-cycle-9, on [ds-vmfs6] app01/app01-000001.vmdk and 1 more') &&
      /--transport vddk or nbd, or set the VDDK libdir/.test(e.fix ?? ''));
  } finally { await done(); }
});

test('httpRefusal: flat base disks on VMFS and NFS pass; deltas, vSAN and vVols objects are refused with the cause', () => {
  assert.equal(httpRefusal({ file: '[ds1] a/a.vmdk', datastoreType: 'VMFS' }), undefined);
  assert.equal(httpRefusal({ file: '[nfs] a/a.vmdk', datastoreType: 'NFS41' }), undefined);
  assert.equal(httpRefusal({ file: '[ds1] a/a.vmdk' }), undefined, 'facts unknown: the reader checks the descriptor itself');
  assert.equal(httpRefusal({ file: '[vv] a/a.vmdk', datastoreType: 'VVOL', backingObjectId: 'rfc4122.1' })?.message,
    'disk [vv] a/a.vmdk is a vVols object (object rfc4122.1), no flat file: the HTTP datastore transport cannot read it');
  assert.match(httpRefusal({ file: '[x] a/a.vmdk', backingObjectId: 'obj-1' })!.message, /stored as object obj-1 \(vSAN or vVols\)/);
  const redo = httpRefusal({ file: '[ds5] a/a-000001.vmdk', deltaDiskFormat: 'redoLogFormat', deltaDiskFormatVariant: 'vmfsSparseVariant', parents: ['[ds5] a/a.vmdk'] }, { ref: 'snapshot-3' })!;
  assert.equal(redo.code, 'HTTP_DS_DELTA');
  assert.match(redo.message, /^disk \[ds5\] a\/a-000001\.vmdk is a delta disk \(redoLogFormat, vmfsSparseVariant\) of snapshot snapshot-3, on \[ds5\] a\/a\.vmdk:/);
  assert.equal(httpRefusal({ key: 2001, parents: ['[ds] p.vmdk'] })!.code, 'HTTP_DS_DELTA', 'a parent alone makes a delta');
});
