import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openSource } from '../../src/source/open.ts';
import { shutdownVddk } from '../../src/source/vddk/index.ts';
import { datastoreFlatUrl, openVmwareDisk, type VmwareDiskSpec } from '../../src/source/transport-chooser.ts';
import { UserError } from '../../src/util/errors.ts';
import { VimSession } from '../../src/vsphere/index.ts';
import { startLab, type Lab } from '../../lab/lab.ts';
import { nbdkit, readAll, sha256, tempDir, type Server } from './helpers.ts';

const root = path.resolve(import.meta.dirname, '../..');
const libdir = path.join(root, 'native/build/vddk-double');
const { dir, cleanup } = tempDir('vmlift-open-');
const servers: Server[] = [];
let lab: Lab;
let session: VimSession;
after(async () => { shutdownVddk(); await Promise.all(servers.map((s) => s.stop())); await lab?.stop(); cleanup(); });

describe('openSource by URI', () => {
  it('opens nbd+unix:// and vddk:/// URIs with the right transport', async () => {
    const file = path.join(dir, 'd.raw');
    writeFileSync(file, Buffer.alloc(1 << 20, 0x42));
    const srv = await nbdkit(dir, 'o', ['--read-only', 'file', file]);
    servers.push(srv);
    const n = await openSource(srv.uri);
    assert.equal(n.transport, 'nbd');
    assert.ok((await n.read(100, 10)).equals(Buffer.alloc(10, 0x42)));
    await n.close();
    shutdownVddk();
    const v = await openSource(`vddk://${file}`, { vddk: { libdir } });
    assert.equal(v.transport, 'vddk');
    assert.equal(v.capacity, 1 << 20);
    await v.close();
    await assert.rejects(openSource('https://vc/folder/x-flat.vmdk?dcPath=a&dsName=b'), (e: unknown) => e instanceof UserError && e.code === 'SOURCE_HTTP_TRUST');
  });
});

describe('openVmwareDisk picks VDDK, then NBD, then HTTP datastore (lab vCenter)', () => {
  let spec: VmwareDiskSpec;
  let config: string;
  before(async () => {
    execFileSync(path.join(root, 'native/build.sh'));
    lab = await startLab({ dir: path.join(dir, 'lab'), vms: 1, diskMb: 8 });
    session = await VimSession.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } });
    const u = new URL(lab.url);
    const vm = lab.vm('vm-0001');
    spec = {
      server: u.hostname, port: Number(u.port), thumbprintSha1: lab.thumbprintSha1, thumbprintSha256: lab.thumbprintSha256,
      user: lab.user, password: lab.password, cookie: () => session.cookie, vm: 'vm-42', diskPath: vm.disks[0]!.file, datacenter: lab.datacenter,
    };
    // The VDDK double reads "[LocalDS_0] dir/x.vmdk" from DATASTORES/LocalDS_0/dir/x-flat.vmdk: point it at the lab's datastore.
    const ds = path.join(dir, 'ds');
    mkdirSync(ds, { recursive: true });
    symlinkSync(lab.datastoreDir, path.join(ds, lab.datastore));
    config = path.join(dir, 'vddk.conf');
    writeFileSync(config, `datastores=${ds}\nuser=${lab.user}\npassword=${lab.password}\nthumbprint=${lab.thumbprintSha1}\n`);
    await lab.write('vm-0001', vm.disks[0]!.key, 12345, Buffer.from('vmlift transport selection'));
  });

  it('computes the datastore URL vCenter serves', () => {
    assert.equal(datastoreFlatUrl({ server: 'vc.example.com', datacenter: 'DC 1', diskPath: '[ds 1] vm a/vm a.vmdk' }),
      'https://vc.example.com/folder/vm%20a/vm%20a-flat.vmdk?dcPath=DC%201&dsName=ds%201');
    assert.equal(new URL(datastoreFlatUrl(spec)).pathname, `/folder/${lab.vm('vm-0001').disks[0]!.datastorePath}`);
  });

  it('uses VDDK when the library loads, and reports it', async () => {
    shutdownVddk();
    const d = lab.vm('vm-0001').disks[0]!;
    const r = await openVmwareDisk(spec, { vddk: { libdir, configFile: config } });
    try {
      assert.equal(r.transport, 'vddk');
      assert.deepEqual(r.skipped, []);
      assert.equal(sha256(await readAll(r.source)), sha256(readFileSync(d.flatPath)));
    } finally { await r.source.close(); }
  });

  it('moves on to NBD when VDDK is missing, and to HTTP datastore when there is no NBD endpoint', async () => {
    shutdownVddk();
    const vm = lab.vm('shape-snapshot');
    const d = vm.disks[0]!;
    const [snap] = await lab.snapshots(vm.name);
    const want = await lab.read(vm.name, d.key, 0, d.capacity, snap!.ref);
    const nbd = await lab.nbdExport(vm.name, snap!.ref, d.key);
    const s2: VmwareDiskSpec = { ...spec, snapshot: snap!.ref, diskPath: d.file, nbdUri: nbd.uri };
    const a = await openVmwareDisk(s2, { vddk: { libdir: path.join(dir, 'no-vddk-here') } });
    try {
      assert.equal(a.transport, 'nbd');
      assert.equal(a.skipped[0]!.transport, 'vddk');
      assert.match(a.skipped[0]!.reason, /no libvixDiskLib.so found/);
      assert.equal(sha256(await readAll(a.source)), sha256(want));
    } finally { await a.source.close(); }
    const b = await openVmwareDisk({ ...s2, nbdUri: undefined }, { vddk: { libdir: path.join(dir, 'no-vddk-here') } });
    try {
      assert.equal(b.transport, 'http-datastore');
      assert.deepEqual(b.skipped.map((s) => s.transport), ['vddk', 'nbd']);
      assert.equal(sha256(await readAll(b.source)), sha256(want));
    } finally { await b.source.close(); }
  });

  it('fails with every transport\'s reason when none works, and obeys an explicit setting', async () => {
    shutdownVddk();
    await assert.rejects(openVmwareDisk({ ...spec, cookie: () => 'vmware_soap_session="expired"' }, { vddk: { libdir: path.join(dir, 'none') }, http: { retry: { attempts: 1 } } }),
      (e: unknown) => e instanceof UserError && e.code === 'SOURCE_NO_TRANSPORT' && /vddk: .*nbd: .*http-datastore: .*401/.test(e.message));
    await assert.rejects(openVmwareDisk(spec, { transport: 'nbd' }), (e: unknown) => e instanceof UserError && e.code === 'NBD_NO_ENDPOINT');
  });
});
