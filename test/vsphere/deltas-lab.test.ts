/**
 * Delta disks and a vSAN datastore in the lab, as vSphere has them, through vmlift's vSphere client:
 * backing chains after snapshots, what /folder serves (and does not), layoutEx, the HTTP reader's
 * refusal before any read, and the lab's NBD side for every snapshot of a chain and for vSAN.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { labFixture, connect, folderRead } from './helpers.ts';
import type { Lab } from '../../lab/lab.ts';
import { methods, type VCenter, type DiskInfo } from '../../src/vsphere/index.ts';
import { str } from '../../src/vsphere/convert.ts';
import { vcenterService, httpDiskOpener } from '../../src/cli/wiring.ts';
import { NbdSource } from '../../src/source/nbd/index.ts';
import { silentLogger } from '../../src/util/log.ts';
import { readAll } from '../source/helpers.ts';
import { UserError } from '../../src/util/errors.ts';

let fx: Awaited<ReturnType<typeof labFixture>>;
let lab: Lab;
let vc: VCenter;
const MiB = 1 << 20;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

before(async () => { fx = await labFixture({ vms: 1, diskMb: 16 }); lab = fx.lab; vc = await connect(lab); });
after(async () => { await vc?.close(); await fx?.cleanup(); });

/** layoutEx as [name, type, backingObjectId] and the disk chains as lists of file names, base first. */
async function layout(ref: string, session = vc.session): Promise<{ files: { name: string; type: string; obj?: string; size: number }[]; chains: Map<number, string[][]> }> {
  const [o] = await methods.retrieveProperties(session, [methods.objectsSpec([{ type: 'VirtualMachine', value: ref }], [{ type: 'VirtualMachine', pathSet: ['layoutEx'] }])]);
  const p = o!.props;
  const lx = p['layoutEx'];
  const arr = (x: unknown): any[] => (x === undefined ? [] : Array.isArray(x) ? x : [x]);
  const files = arr(lx.file).map((f: any) => ({ key: Number(f.key), name: String(str(f.name)), type: String(str(f.type)), obj: str(f.backingObjectId) || undefined, size: Number(str(f.size)) }));
  const byKey = new Map(files.map((f) => [f.key, f.name]));
  const chains = new Map<number, string[][]>();
  for (const d of arr(lx.disk)) chains.set(Number(d.key), arr(d.chain).map((u: any) => arr(u.fileKey).map((k: unknown) => byKey.get(Number(k))!)));
  return { files, chains };
}

async function folderText(path: string, ds?: string): Promise<{ status: number; text: string }> {
  const r = await folderRead(lab, lab.folderUrl(path, ds), vc.session.cookie, 0, 64 * 1024);
  return { status: r.status, text: r.body.toString('latin1') };
}

async function viewRange(vm: string, key: number, snapshot: string | undefined, offset: number, length: number): Promise<{ status: number; body: Buffer }> {
  const { url, headers } = lab.viewUrl(vm, key, snapshot);
  const agent = new Agent({ connect: { ca: lab.certPem } });
  try {
    const res = await request(url, { dispatcher: agent, headers: { ...headers, range: `bytes=${offset}-${offset + length - 1}` } });
    return { status: res.statusCode, body: Buffer.from(await res.body.arrayBuffer()) };
  } finally { await agent.close(); }
}

/** Fetches datastore files through /folder into a folder and reads the last descriptor with qemu-img (following its parents): SHA-256 of the raw result. */
async function qemuChain(l: Lab, cookie: string | undefined, folder: string, files: string[]): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-chain-'));
  try {
    for (const f of files) {
      const r = await folderRead(l, l.folderUrl(`${folder}/${f}`), cookie, 0, 64 * MiB);
      assert.equal(r.status, 206, f);
      writeFileSync(join(dir, f), r.body);
    }
    const top = join(dir, files[files.length - 2]!);
    const info = JSON.parse(execFileSync('qemu-img', ['info', '--backing-chain', '--output=json', top]).toString());
    assert.equal(info.length, 2, 'the delta and its parent');
    execFileSync('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', top, join(dir, 'out.raw')]);
    return sha(readFileSync(join(dir, 'out.raw')));
  } finally { rmSync(dir, { recursive: true, force: true }); }
}

async function nbdSha(vm: string, snapshot: string, key: number): Promise<string> {
  const e = await lab.nbdExport(vm, snapshot, key);
  const src = await NbdSource.open(e.uri);
  try { return sha(await readAll(src)); } finally { await src.close(); }
}

test('a kept foreign snapshot makes the live disk a delta; a cycle snapshot is second in the chain and its disk is that delta', async () => {
  const vm = await vc.vm('shape-foreign-snapshot');
  const d = lab.vm(vm.name).disks[0]!;
  assert.deepEqual(vm.snapshots.map((s) => s.name), ['VEEAM BACKUP TEMPORARY SNAPSHOT']);
  const live = vm.disks[0]!;
  assert.equal(live.file, '[LocalDS_0] shape-foreign-snapshot/shape-foreign-snapshot-000001.vmdk');
  assert.deepEqual(live.parents, ['[LocalDS_0] shape-foreign-snapshot/shape-foreign-snapshot.vmdk']);
  assert.equal(live.deltaDiskFormat, 'seSparseFormat', 'VMFS-6: SEsparse for every delta');

  const foreign = (await vc.snapshotDisks(vm.snapshots[0]!.ref))[0]!;
  assert.equal(foreign.file, d.file, 'the first snapshot keeps the base disk it was taken on');
  assert.equal(foreign.parents, undefined);
  assert.equal(foreign.deltaDiskFormat, undefined);
  assert.equal(foreign.datastore, 'LocalDS_0');
  assert.equal(foreign.datastoreType, 'VMFS');

  await lab.write(vm.name, d.key, 3 * MiB, Buffer.alloc(64 * 1024, 0x5a)); // into delta 000001
  const cycle = await vc.createSnapshot(vm.ref, 'vmlift-delta-test', { quiesce: false });
  try {
    const sd = (await vc.snapshotDisks(cycle.ref))[0]!;
    assert.equal(sd.file, '[LocalDS_0] shape-foreign-snapshot/shape-foreign-snapshot-000001.vmdk');
    assert.equal(sd.deltaDiskFormat, 'seSparseFormat');
    assert.deepEqual(sd.parents, [d.file]);
    assert.equal(sd.uuid, foreign.uuid, 'a delta keeps the virtual disk UUID');
    const now = (await vc.vm(vm.ref)).disks[0]!;
    assert.equal(now.file, '[LocalDS_0] shape-foreign-snapshot/shape-foreign-snapshot-000002.vmdk');
    assert.deepEqual(now.parents, [sd.file, d.file]);

    // layoutEx: descriptor + extent per chain level, base first; deltas have -sesparse extents, no -flat
    const lx = await layout(vm.ref);
    const stem = '[LocalDS_0] shape-foreign-snapshot/shape-foreign-snapshot';
    assert.deepEqual(lx.chains.get(d.key), [[`${stem}.vmdk`, `${stem}-flat.vmdk`], [`${stem}-000001.vmdk`, `${stem}-000001-sesparse.vmdk`], [`${stem}-000002.vmdk`, `${stem}-000002-sesparse.vmdk`]]);
    const types = new Map(lx.files.map((f) => [f.name, f.type]));
    assert.equal(types.get(`${stem}-000001.vmdk`), 'diskDescriptor');
    assert.equal(types.get(`${stem}-000001-sesparse.vmdk`), 'diskExtent');
    assert.ok(!lx.files.some((f) => /-00000\d-flat\.vmdk$/.test(f.name)), 'no flat extent of a delta in layoutEx');

    // /folder: the descriptors and the base flat are served, a delta has no flat, its extent is not a flat image
    const desc = await folderText('shape-foreign-snapshot/shape-foreign-snapshot-000001.vmdk');
    assert.equal(desc.status, 206);
    assert.match(desc.text, /createType="seSparse"/);
    assert.match(desc.text, /parentFileNameHint="shape-foreign-snapshot\.vmdk"/);
    assert.match(desc.text, /RW 32768 SESPARSE "shape-foreign-snapshot-000001-sesparse\.vmdk"/);
    const baseDesc = await folderText('shape-foreign-snapshot/shape-foreign-snapshot.vmdk');
    assert.match(baseDesc.text, /createType="vmfs"/);
    assert.match(baseDesc.text, /parentCID=ffffffff/);
    const cid = /CID=([0-9a-f]{8})/.exec(baseDesc.text)![1];
    assert.match(desc.text, new RegExp(`parentCID=${cid}`), 'the delta points at its parent by CID');
    assert.equal((await folderText('shape-foreign-snapshot/shape-foreign-snapshot-000001-flat.vmdk')).status, 404);
    assert.equal((await folderText('shape-foreign-snapshot/shape-foreign-snapshot-000002-flat.vmdk')).status, 404);
    assert.equal((await folderRead(lab, lab.folderUrl(d.datastorePath), vc.session.cookie, 0, 16)).status, 206);
    const ext = await folderRead(lab, lab.folderUrl('shape-foreign-snapshot/shape-foreign-snapshot-000001-sesparse.vmdk'), vc.session.cookie, 0, 64 * MiB);
    assert.equal(ext.status, 206);
    assert.equal(ext.body.length, lx.files.find((f) => f.name === `${stem}-000001-sesparse.vmdk`)!.size, 'layoutEx gives the extent\'s size');
    assert.ok(ext.body.length < d.capacity / 4, 'a delta holds what changed, not the disk');
    assert.equal(ext.body.readBigUInt64LE(0), 0xcafebaben, 'an SEsparse constant header');
    assert.equal(ext.body.readBigUInt64LE(8), 0x200000001n);
    assert.equal(ext.body.readBigUInt64LE(16), 32768n, 'capacity in sectors');

    // the HTTP reader refuses the delta before anything is read (no URL is even built)
    const port = vcenterService(vc);
    let lookups = 0;
    const counted = { ...port, datacenterOf: async (r: string) => { lookups++; return port.datacenterOf(r); } };
    const opener = httpDiskOpener(vc, counted, { thumbprint: lab.thumbprint }, 2 * MiB, silentLogger);
    const disk = (await port.snapshotDisks(vm.ref, cycle))[0]!;
    assert.equal(disk.deltaDiskFormat, 'seSparseFormat');
    await assert.rejects(opener.open(vm.ref, cycle, disk), (e: unknown) => e instanceof UserError && e.code === 'HTTP_DS_DELTA' &&
      e.message.includes('disk [LocalDS_0] shape-foreign-snapshot/shape-foreign-snapshot-000001.vmdk is a delta disk (seSparseFormat) of snapshot vmlift-delta-test') &&
      /--transport vddk or nbd/.test(e.fix ?? '') && /connector init --vddk-libdir DIR/.test(e.fix ?? ''));
    assert.equal(lookups, 0);
    // ...and reads the foreign snapshot's flat base disk
    const base = await opener.open(vm.ref, vm.snapshots[0]!, (await port.snapshotDisks(vm.ref, vm.snapshots[0]!))[0]!);
    try { assert.equal(sha(await readAll(base)), sha(await lab.read(vm.name, d.key, 0, d.capacity, vm.snapshots[0]!.ref))); } finally { await base.close(); }

    // the lab's own views: NBD for every snapshot of the chain, and the view endpoint with Range
    const atForeign = await lab.read(vm.name, d.key, 0, d.capacity, vm.snapshots[0]!.ref);
    const atCycle = await lab.read(vm.name, d.key, 0, d.capacity, cycle.ref);
    assert.ok(atCycle.subarray(3 * MiB, 3 * MiB + 65536).equals(Buffer.alloc(65536, 0x5a)));
    assert.notEqual(sha(atForeign), sha(atCycle));
    assert.equal(await nbdSha(vm.name, vm.snapshots[0]!.ref, d.key), sha(atForeign));
    assert.equal(await nbdSha(vm.name, cycle.ref, d.key), sha(atCycle));
    // The datastore's files are an SEsparse chain a VMDK reader follows (descriptor, parentFileNameHint, base flat).
    assert.equal(await qemuChain(lab, vc.session.cookie, 'shape-foreign-snapshot', ['shape-foreign-snapshot.vmdk', 'shape-foreign-snapshot-flat.vmdk',
      'shape-foreign-snapshot-000001.vmdk', 'shape-foreign-snapshot-000001-sesparse.vmdk']), sha(atCycle), 'qemu-img reads the delta chain as the cycle snapshot');
    const part = await viewRange(vm.name, d.key, cycle.ref, 3 * MiB - 10, 100);
    assert.equal(part.status, 206);
    assert.ok(part.body.equals(atCycle.subarray(3 * MiB - 10, 3 * MiB + 90)));
  } finally {
    await vc.removeSnapshot(vm.ref, cycle.ref);
  }
  // consolidation: the live disk is 000001 again and the 000002 files are gone
  const after1 = (await vc.vm(vm.ref)).disks[0]!;
  assert.equal(after1.file, '[LocalDS_0] shape-foreign-snapshot/shape-foreign-snapshot-000001.vmdk');
  assert.equal((await folderText('shape-foreign-snapshot/shape-foreign-snapshot-000002.vmdk')).status, 404);
  assert.equal((await layout(vm.ref)).chains.get(d.key)!.length, 2);
});

test('a vSAN datastore: descriptors only, the data is an object, readable through NBD and refused by the HTTP reader', async () => {
  const vm = await vc.vm('shape-vsan');
  const ld = lab.vm('shape-vsan');
  assert.equal(vm.disks.length, 2);
  const live = vm.disks[0]!;
  assert.equal(live.file, '[vsanDatastore] shape-vsan/shape-vsan.vmdk');
  assert.ok(live.backingObjectId && /^[0-9a-f-]{36}$/.test(live.backingObjectId));
  assert.equal(ld.disks[0]!.datastore, 'vsanDatastore');

  const inv = await vc.inventory();
  assert.ok(inv.datastores.some((x) => x.name === 'vsanDatastore'));
  const [dso] = await methods.retrieveProperties(vc.session, [methods.objectsSpec([{ type: 'Datastore', value: live.datastoreRef! }], [{ type: 'Datastore', pathSet: ['summary.type', 'name'] }])]);
  assert.equal(str(dso!.props['summary.type']), 'vsan');

  const lx = await layout(vm.ref);
  for (const d of ld.disks) {
    const chain = lx.chains.get(d.key)!;
    assert.deepEqual(chain, [[d.file]], 'layoutEx lists only the descriptor');
  }
  const descFile = lx.files.find((f) => f.name === live.file)!;
  assert.equal(descFile.type, 'diskDescriptor');
  assert.equal(descFile.obj, live.backingObjectId);

  const desc = await folderText('shape-vsan/shape-vsan.vmdk', 'vsanDatastore');
  assert.equal(desc.status, 206);
  assert.match(desc.text, new RegExp(`RW 32768 VSAN "vsan://${live.backingObjectId}"`));
  assert.equal((await folderText('shape-vsan/shape-vsan-flat.vmdk', 'vsanDatastore')).status, 404);
  assert.equal((await folderText(ld.disks[1]!.datastorePath, 'vsanDatastore')).status, 404);

  const snap = await vc.createSnapshot(vm.ref, 'vmlift-vsan-test', { quiesce: false });
  try {
    const disks = await vc.snapshotDisks(snap.ref);
    const sd: DiskInfo = disks[0]!;
    assert.equal(sd.file, live.file);
    assert.equal(sd.datastoreType, 'vsan');
    assert.equal(sd.datastore, 'vsanDatastore');
    assert.equal(sd.backingObjectId, live.backingObjectId);
    const now = (await vc.vm(vm.ref)).disks[0]!;
    assert.equal(now.deltaDiskFormat, 'redoLogFormat');
    assert.equal(now.deltaDiskFormatVariant, 'vsanSparseVariant');
    assert.notEqual(now.backingObjectId, live.backingObjectId, 'a vSAN delta is an object of its own');
    assert.deepEqual((await layout(vm.ref)).chains.get(2000), [[live.file], ['[vsanDatastore] shape-vsan/shape-vsan-000001.vmdk']]);

    const port = vcenterService(vc);
    const opener = httpDiskOpener(vc, port, { thumbprint: lab.thumbprint }, 2 * MiB, silentLogger);
    for (const d of await port.snapshotDisks(vm.ref, snap)) {
      await assert.rejects(opener.open(vm.ref, snap, d), (e: unknown) => e instanceof UserError && e.code === 'HTTP_DS_OBJECT' &&
        e.message.startsWith(`disk ${d.file} is a vSAN object (object ${d.backingObjectId}), no flat file`) && /--transport vddk or nbd/.test(e.fix ?? ''));
    }
    for (const d of ld.disks) {
      await lab.write(vm.name, d.key, MiB, Buffer.alloc(4096, 0x77)); // after the snapshot: not in its view
      const want = await lab.read(vm.name, d.key, 0, d.capacity, snap.ref);
      assert.ok(!want.subarray(MiB, MiB + 4096).equals(Buffer.alloc(4096, 0x77)));
      assert.equal(await nbdSha(vm.name, snap.ref, d.key), sha(want));
    }
  } finally {
    await vc.removeSnapshot(vm.ref, snap.ref);
  }
});

test('on VMFS-5 a small disk gets redo-log (VMFSsparse) deltas with -delta.vmdk extents', async () => {
  const fx5 = await labFixture({ vms: 0, diskMb: 16, vmfsVersion: 5 });
  const vc5 = await connect(fx5.lab);
  try {
    const vm = await vc5.vm('shape-snapshot');
    const d = vm.disks[0]!;
    assert.equal(d.deltaDiskFormat, 'redoLogFormat');
    assert.equal(d.deltaDiskFormatVariant, 'vmfsSparseVariant');
    assert.equal(d.file, '[LocalDS_0] shape-snapshot/shape-snapshot-000001.vmdk');
    const cookie = vc5.session.cookie;
    const desc = await folderRead(fx5.lab, fx5.lab.folderUrl('shape-snapshot/shape-snapshot-000001.vmdk'), cookie, 0, 4096);
    assert.match(desc.body.toString(), /createType="vmfsSparse"/);
    assert.match(desc.body.toString(), /RW 32768 VMFSSPARSE "shape-snapshot-000001-delta\.vmdk"/);
    const cowd = await folderRead(fx5.lab, fx5.lab.folderUrl('shape-snapshot/shape-snapshot-000001-delta.vmdk'), cookie, 0, 64 * MiB);
    assert.equal(cowd.body.subarray(0, 4).toString(), 'COWD');
    const lx5 = await layout(vm.ref, vc5.session);
    assert.equal(cowd.body.length, lx5.files.find((f) => f.name === '[LocalDS_0] shape-snapshot/shape-snapshot-000001-delta.vmdk')!.size);
    assert.equal((await folderRead(fx5.lab, fx5.lab.folderUrl('shape-snapshot/shape-snapshot-000001-sesparse.vmdk'), cookie, 0, 20)).status, 404);

    // The datastore's files are a VMFSsparse chain any VMDK reader follows: qemu-img reads the
    // cycle snapshot's delta (descriptor → parentFileNameHint → base flat) as the snapshot's data.
    const ld = fx5.lab.vm('shape-snapshot').disks[0]!;
    await fx5.lab.write(vm.name, ld.key, 5 * MiB + 512, Buffer.alloc(200_000, 0x61));
    const cycle = await vc5.createSnapshot(vm.ref, 'vmlift-redo', { quiesce: false });
    try {
      await fx5.lab.write(vm.name, ld.key, 5 * MiB, Buffer.alloc(MiB, 0x62)); // after the cycle snapshot: in 000002 only
      const want = await fx5.lab.read(vm.name, ld.key, 0, ld.capacity, cycle.ref);
      assert.ok(want.subarray(5 * MiB + 512, 5 * MiB + 512 + 200_000).equals(Buffer.alloc(200_000, 0x61)));
      assert.equal(await qemuChain(fx5.lab, cookie, 'shape-snapshot', ['shape-snapshot.vmdk', 'shape-snapshot-flat.vmdk', 'shape-snapshot-000001.vmdk',
        'shape-snapshot-000001-delta.vmdk']), sha(want), 'qemu-img reads the delta chain as the snapshot');
    } finally { await vc5.removeSnapshot(vm.ref, cycle.ref); }
  } finally { await vc5.close(); await fx5.cleanup(); }
});
