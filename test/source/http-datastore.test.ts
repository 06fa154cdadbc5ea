import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { request, Agent } from 'undici';
import { HttpDatastoreSource, checkDescriptor, parseDescriptor } from '../../src/source/http-datastore/index.ts';
import { SourceReadError } from '../../src/source/retry.ts';
import { UserError } from '../../src/util/errors.ts';
import { VimSession } from '../../src/vsphere/index.ts';
import { startLab, type Lab } from '../../lab/lab.ts';
import { readAll, sha256, tempDir } from './helpers.ts';

const { dir, cleanup } = tempDir('vmlift-httpds-');
let lab: Lab;
let session: VimSession;
let agent: Agent;
after(async () => { await agent?.close(); await lab?.stop(); cleanup(); });

const MiB = 1 << 20;

async function put(url: string, body: string): Promise<void> {
  const r = await request(url, { method: 'PUT', body, headers: { cookie: session.cookie! }, dispatcher: agent });
  await r.body.dump();
  assert.ok(r.statusCode < 300, `PUT ${url}: ${r.statusCode}`);
}

describe('HTTP datastore reads against the lab vCenter', () => {
  before(async () => {
    lab = await startLab({ dir, vms: 1, diskMb: 16 });
    session = await VimSession.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } });
    agent = new Agent({ connect: { ca: lab.certPem } });
  });

  it('reads a flat disk through /folder with Range GETs in parallel, byte for byte', async () => {
    const vm = lab.vm('two-disks');
    const d = vm.disks[0]!;
    // Give the disk content the lab's guest writes put there.
    const blob = Buffer.alloc(3 * MiB + 776);
    for (let i = 0; i < blob.length; i += 4) blob.writeUInt32LE(Math.imul(i, 2654435761) >>> 0, i);
    await lab.write(vm.name, d.key, 5 * MiB + 3, blob);
    const src = await HttpDatastoreSource.open({ url: lab.folderUrl(d.datastorePath), cookie: () => session.cookie, trust: { thumbprint: lab.thumbprint }, maxReadSize: 1 * MiB });
    try {
      assert.equal(src.capacity, d.capacity);
      assert.equal(src.transport, 'http-datastore');
      const got = await readAll(src, { chunk: MiB, uneven: true });
      assert.equal(sha256(got), sha256(readFileSync(d.flatPath)));
      assert.equal(sha256(got), sha256(await lab.read(vm.name, d.key, 0, d.capacity)));
      assert.equal(sha256(await readAll(src, { chunk: MiB, uneven: true, into: true })), sha256(got));
      assert.ok(got.subarray(5 * MiB + 3, 5 * MiB + 3 + blob.length).equals(blob));
      assert.ok(!src.uri.includes('cookie'));
    } finally { await src.close(); }
  });

  it('reads the data as of the snapshot while the guest keeps writing', async () => {
    const vm = lab.vm('shape-snapshot');
    const d = vm.disks[0]!;
    const [snap] = await lab.snapshots(vm.name);
    const before = await lab.read(vm.name, d.key, 0, d.capacity, snap!.ref);
    await lab.write(vm.name, d.key, 2 * MiB, Buffer.alloc(MiB, 0xee)); // lands in the live delta, not the snapshot
    const src = await HttpDatastoreSource.open({ url: lab.folderUrl(d.datastorePath), cookie: session.cookie, trust: { thumbprint: lab.thumbprint } });
    try {
      const got = await readAll(src);
      assert.equal(sha256(got), sha256(before), 'the base flat file is the snapshot view');
      assert.ok(!got.subarray(2 * MiB, 3 * MiB).equals(Buffer.alloc(MiB, 0xee)));
    } finally { await src.close(); }
  });

  it('follows a flat descriptor to its extent and refuses sparse and delta disks', async () => {
    const vm = lab.vm('vm-0001');
    const d = vm.disks[0]!;
    const folder = d.datastorePath.split('/')[0]!;
    const flatName = d.datastorePath.split('/')[1]!;
    await put(lab.folderUrl(`${folder}/flat-desc.vmdk`), `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfs"\n\n# Extent description\nRW ${d.capacity / 512} VMFS "${flatName}"\n\nddb.adapterType = "lsilogic"\n`);
    const src = await HttpDatastoreSource.open({ url: lab.folderUrl(`${folder}/flat-desc.vmdk`), cookie: session.cookie, trust: { thumbprint: lab.thumbprint } });
    assert.equal(src.capacity, d.capacity);
    assert.ok(src.uri.includes(encodeURIComponent(flatName)));
    assert.ok((await src.read(0, 65536)).equals(readFileSync(d.flatPath).subarray(0, 65536)));
    await src.close();

    await put(lab.folderUrl(`${folder}/snap-000001.vmdk`), `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=fffffffe\ncreateType="seSparse"\nparentFileNameHint="vm-0001.vmdk"\n\nRW ${d.capacity / 512} SESPARSE "snap-000001-sesparse.vmdk"\n`);
    await assert.rejects(HttpDatastoreSource.open({ url: lab.folderUrl(`${folder}/snap-000001.vmdk`), cookie: session.cookie, trust: { thumbprint: lab.thumbprint } }),
      (e: unknown) => e instanceof UserError && e.code === 'HTTP_DS_SPARSE' && /createType "seSparse"/.test(e.message) && /VDDK or NBD/.test(e.fix ?? ''));
    await assert.rejects(HttpDatastoreSource.open({ url: lab.folderUrl(`${folder}/snap-000001-delta.vmdk`), cookie: session.cookie, trust: { thumbprint: lab.thumbprint } }),
      (e: unknown) => e instanceof UserError && e.code === 'HTTP_DS_SPARSE' && /delta/.test(e.message));
  });

  it('names the cause of a refused cookie, a missing file and a wrong thumbprint', async () => {
    const d = lab.vm('vm-0001').disks[0]!;
    const url = lab.folderUrl(d.datastorePath);
    await assert.rejects(HttpDatastoreSource.open({ url, cookie: 'vmware_soap_session="nope"', trust: { thumbprint: lab.thumbprint }, retry: { attempts: 1 } }),
      (e: unknown) => e instanceof UserError && e.code === 'HTTP_DS_AUTH' && /401/.test(e.message));
    await assert.rejects(HttpDatastoreSource.open({ url: lab.folderUrl('vm-0001/absent-flat.vmdk'), cookie: session.cookie, trust: { thumbprint: lab.thumbprint } }),
      (e: unknown) => e instanceof UserError && e.code === 'HTTP_DS_NOT_FOUND');
    await assert.rejects(HttpDatastoreSource.open({ url, cookie: session.cookie, trust: { thumbprint: 'AB'.repeat(32) }, retry: { attempts: 1 } }),
      (e: unknown) => e instanceof UserError && /pinned/.test(String((e as Error).message) + String((e as Error).cause)));
  });

  it('fails reads with offset and cause once the session expires', async () => {
    const s2 = await VimSession.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } });
    const d = lab.vm('vm-0001').disks[0]!;
    const src = await HttpDatastoreSource.open({ url: lab.folderUrl(d.datastorePath), cookie: () => s2.cookie, trust: { thumbprint: lab.thumbprint }, retry: { attempts: 2, baseDelayMs: 1 } });
    try {
      await src.read(0, 4096);
      await lab.expireSessions();
      await assert.rejects(src.read(MiB, 4096), (e: unknown) => e instanceof SourceReadError && e.offset === MiB && /HTTP 401, the session cookie was refused/.test(e.message));
    } finally { await src.close(); }
    session = await VimSession.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } });
  });
});

describe('VMDK descriptors', () => {
  it('accepts flat and refuses sparse, delta and split disks', () => {
    const flat = parseDescriptor('# Disk DescriptorFile\nversion=1\nparentCID=ffffffff\ncreateType="vmfs"\nRW 2048 VMFS "a-flat.vmdk"\n');
    assert.equal(checkDescriptor('a.vmdk', flat), undefined);
    assert.equal(flat.extents[0]!.file, 'a-flat.vmdk');
    const hosted = parseDescriptor('createType="monolithicFlat"\nRW 2048 FLAT "a-flat.vmdk" 0\n');
    assert.equal(checkDescriptor('a.vmdk', hosted), undefined);
    assert.match(checkDescriptor('a.vmdk', parseDescriptor('createType="vmfsSparse"\nRW 2048 VMFSSPARSE "a-delta.vmdk"\n'))!.message, /vmfsSparse/);
    assert.match(checkDescriptor('a.vmdk', parseDescriptor('createType="vmfs"\nparentCID=1234abcd\nparentFileNameHint="base.vmdk"\nRW 2048 VMFS "a-flat.vmdk"\n'))!.message, /delta disk with parent base.vmdk/);
    assert.match(checkDescriptor('a.vmdk', parseDescriptor('createType="monolithicFlat"\nRW 2048 FLAT "a-f001.vmdk" 0\nRW 2048 FLAT "a-f002.vmdk" 0\n'))!.message, /exactly one flat extent/);
    assert.match(checkDescriptor('a.vmdk', parseDescriptor('createType="vmfsRawDeviceMap"\nRW 2048 VMFSRDM "a-rdm.vmdk"\n'))!.message, /raw-mapped/);
    assert.ok(checkDescriptor('x-sesparse.vmdk', undefined));
  });
});
