/** The vSphere client against hand-written fixtures of what a standalone ESXi host (hostd) sends, without a lab. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VCenter, VimFault, faultToUserError } from '../../src/vsphere/index.ts';
import { startReplay, type ReplayOptions } from './replay-server.ts';

async function replayed(o: ReplayOptions) {
  const r = await startReplay({ ...o, answers: { RetrieveServiceContent: 'service-content-esxi.xml', ...o.answers } });
  const vc = await VCenter.connect({ server: r.url, user: 'root', password: 'secret', trust: { thumbprint: r.thumbprint }, timeoutMs: 10_000 })
    .catch(async (e) => { await r.close(); throw e; });
  return { r, vc, done: async () => { await vc.close(); await r.close(); } };
}

test('hostd is detected as an ESXi host, logged in through ha-sessionmgr, and its numeric VM ids are looked up directly', async () => {
  const { r, vc, done } = await replayed({ answers: { RetrievePropertiesEx: 'vm-esxi.xml' } });
  try {
    assert.equal(vc.session.isHostAgent, true);
    assert.equal(vc.session.serverLabel, 'ESXi host');
    assert.equal(vc.session.apiVersion, '8.0.3.0');
    assert.match(r.requests.find((q) => q.op === 'Login')!.body, /_this type="SessionManager">ha-sessionmgr</);
    const vm = await vc.vm('7');
    assert.equal(vm.name, 'web01');
    assert.equal(vm.datacenter, 'ha-datacenter');
    assert.equal(r.count('CreateContainerView'), 0, 'an id is no name search');
  } finally { await done(); }
});

test('RestrictedVersion (the free vSphere Hypervisor license) is VC_HOST_LICENSE with the license as cause and fix', async () => {
  const { vc, done } = await replayed({ answers: { RetrievePropertiesEx: 'vm-esxi.xml', ReconfigVM_Task: 'fault-restricted-version.xml' } });
  try {
    await assert.rejects(vc.enableCbt('7'), (e: unknown) => {
      assert.ok(e instanceof VimFault && e.type === 'RestrictedVersion');
      assert.equal(e.code, 'VC_HOST_LICENSE');
      assert.match(e.fix ?? '', /free vSphere Hypervisor license allows reads only/);
      assert.equal(e.transient, false);
      const u = faultToUserError(e);
      assert.equal(u.code, 'VC_HOST_LICENSE');
      assert.match(u.message, /ESXi host refused ReconfigVM_Task: its license makes the vSphere API read-only/);
      return true;
    });
  } finally { await done(); }
});

test('properties that come back NotAuthenticated in missingSet (an ended session) log in again and are read once more', async () => {
  const { r, vc, done } = await replayed({ answers: { RetrievePropertiesEx: ['vm-session-ended.xml', 'vm-esxi.xml'] } });
  try {
    const vm = await vc.vm('7');
    assert.equal(vm.name, 'web01');
    assert.deepEqual(vm.unreadable, []);
    assert.equal(vc.session.relogins, 1);
    assert.equal(r.count('Login'), 2);
    assert.equal(r.count('RetrievePropertiesEx'), 2);
  } finally { await done(); }
});
