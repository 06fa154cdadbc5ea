/** The per-disk transport choice: auto's order and reasons, HTTP only for a flat extent, explicit transports that cannot read. */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { VmwareDiskOpener, httpUnsafeReason, normalizeTransport } from '../../src/source/vmware-disk-opener.ts';
import { NbdServers } from '../../src/source/nbd-server.ts';
import { parseSettings } from '../../src/engine/settings.ts';
import { UserError } from '../../src/util/errors.ts';
import { tempDir } from './helpers.ts';

const root = path.resolve(import.meta.dirname, '../..');
const { dir, cleanup } = tempDir('vmlift-vdo-');
after(cleanup);
const opener = (o: { libdir?: string; nbd?: boolean } = {}) => new VmwareDiskOpener({
  server: 'vc.example', user: 'u', password: 'p', thumbprintSha1: async () => 'AA', maxReadSize: 2 << 20, http: { trust: { insecure: true } },
  vddk: { libdir: o.libdir },
  nbd: o.nbd ? new NbdServers({ dir, command: ['nbdkit', '--unix', '{socket}', 'memory', '1M'] }) : new NbdServers({ dir, command: undefined }),
});
const flat = { vm: 'vm-42', diskKey: 2000 };
const delta = { ...flat, backing: { deltaDiskFormat: 'seSparseFormat' } };
const vsan = { ...flat, backing: { backingObjectId: '52a1-…', datastoreType: 'vsan' } };

describe('VmwareDiskOpener.choose', () => {
  it('auto: vddk when libvixDiskLib loads, else nbd with a server command, else http for a flat extent, each with its reason', async () => {
    const v = await opener({ libdir: path.join(root, 'native/build/vddk-double'), nbd: true }).choose('auto', delta);
    assert.equal(v.transport, 'vddk');
    assert.match(v.reason, /^auto: libvixDiskLib from .*vddk-double/);
    const n = await opener({ libdir: path.join(dir, 'nothing'), nbd: true }).choose('auto', delta);
    assert.equal(n.transport, 'nbd');
    assert.match(n.reason, /^auto: no VDDK \(no libvixDiskLib\.so found in .*nothing.*\); NBD through the configured NBD server command \(nbdkit\)/);
    const def = opener();
    if ((await def.nbdAvailable()).ok) return; // an nbdkit with the vddk plugin is installed here
    const h = await def.choose('auto', flat);
    assert.equal(h.transport, 'http');
    assert.match(h.reason, /no VDDK libdir is configured.*no NBD server \(nbdkit has no usable vddk plugin.*flat extent, safe over HTTP/);
    for (const [req, why] of [[delta, /http: delta disk seSparse/], [vsan, /http: vSAN object, no flat file/]] as const) {
      await assert.rejects(def.choose('auto', req), (e: unknown) => e instanceof UserError && e.code === 'SOURCE_NO_TRANSPORT' && why.test(e.message) && /--vddk-libdir/.test(e.fix ?? ''));
    }
  });

  it('an explicit transport that cannot read the disk fails it with the cause and the fix', async () => {
    await assert.rejects(opener().choose('http', delta), (e: unknown) => e instanceof UserError && e.code === 'HTTP_DS_DELTA'
      && /disk 2000 is a delta disk \(seSparseFormat\)/.test(e.message) && /--transport vddk/.test(e.fix ?? '') && /--vddk-libdir/.test(e.fix ?? ''));
    await assert.rejects(opener().choose('http', vsan), (e: unknown) => e instanceof UserError && e.code === 'HTTP_DS_OBJECT' && /vSAN object .*no flat file/.test(e.message));
    await assert.rejects(opener().choose('vddk', flat), (e: unknown) => e instanceof UserError && e.code === 'VDDK_UNAVAILABLE'
      && /the job's transport is vddk, but no VDDK libdir is configured/.test(e.message) && /--vddk-libdir/.test(e.fix ?? ''));
    assert.equal((await opener({ nbd: true }).choose('nbd', delta)).transport, 'nbd');
    assert.equal((await opener().choose('http', flat)).transport, 'http');
  });

  it('names: http-datastore is the older name of http; backing facts that make HTTP unsafe', () => {
    assert.equal(normalizeTransport('http-datastore'), 'http');
    assert.equal(normalizeTransport(undefined), 'auto');
    assert.throws(() => normalizeTransport('ftp'), (e: unknown) => e instanceof UserError && e.code === 'BAD_SETTING');
    assert.deepEqual(parseSettings({ transport: 'http-datastore' }), { transport: 'http' });
    assert.throws(() => parseSettings({ transport: 'ftp' }), /unknown disk transport/);
    assert.equal(httpUnsafeReason(undefined), null);
    assert.equal(httpUnsafeReason({}), null);
    assert.equal(httpUnsafeReason({ deltaDiskFormat: 'redoLogFormat' }), 'delta disk redoLog, no flat extent at this snapshot');
    assert.equal(httpUnsafeReason({ datastoreType: 'VVOL' }), 'vVols object, no flat file');
    assert.equal(httpUnsafeReason(undefined, '[ds1] web/web-000002.vmdk'), 'delta disk (the snapshot\'s backing is web-000002.vmdk), no flat extent at this snapshot');
    assert.equal(httpUnsafeReason({}, '[ds1] web/web.vmdk'), null);
  });
});
