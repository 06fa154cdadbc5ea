/** The vSphere client against hand-written fixtures of what real vCenters send (fixtures/vsphere/), without a lab. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_API_VERSION, VCenter, VimFault, methods, parseFault, parseServiceVersions, preflight, unescapeName } from '../../src/vsphere/index.ts';
import { fixture, startReplay, type ReplayOptions } from './replay-server.ts';

async function replayed(o: ReplayOptions) {
  const r = await startReplay(o);
  const vc = await VCenter.connect({ server: r.url, user: 'vmlift', password: 'secret', trust: { thumbprint: r.thumbprint }, timeoutMs: 10_000 })
    .catch(async (e) => { await r.close(); throw e; });
  return { r, vc, done: async () => { await vc.close(); await r.close(); } };
}

const MiB = 1024 * 1024;

test('CBT off in the vSphere 7.0U3 form (InvalidArgument on startOffset) is VC_CBT_OFF with its fix', async () => {
  const { vc, done } = await replayed({ answers: { QueryChangedDiskAreas: 'fault-cbt-off-7.0u3.xml' } });
  try {
    await assert.rejects(vc.changedAreas('vm-42', 'snapshot-3', 2000, '*', 64 * MiB), (e: Error & { code?: string; fix?: string }) =>
      e.code === 'VC_CBT_OFF' && /change tracking is not active/.test(e.message) && /vmlift vc cbt enable/.test(e.fix ?? ''));
  } finally { await done(); }
});

test('NotFound on the snapshot says the snapshot is gone and to run the cycle again', async () => {
  const { vc, done } = await replayed({ answers: { QueryChangedDiskAreas: 'fault-snapshot-not-found.xml' } });
  try {
    await assert.rejects(vc.changedAreas('vm-42', 'snapshot-3', 2000, '*', 64 * MiB), (e: Error & { code?: string; fix?: string }) =>
      e.code === 'VC_SNAPSHOT_GONE' && /snapshot snapshot-3 no longer exists/.test(e.message) && /run the cycle again/.test(e.fix ?? ''));
  } finally { await done(); }
});

test('a snapshot morref the server no longer knows (ManagedObjectNotFound naming it) is VC_SNAPSHOT_GONE too', async () => {
  const { vc, done } = await replayed({ answers: { QueryChangedDiskAreas: 'fault-snapshot-moref-gone.xml' } });
  try {
    await assert.rejects(vc.changedAreas('vm-42', 'snapshot-3', 2000, '*', 64 * MiB), (e: Error & { code?: string }) =>
      e.code === 'VC_SNAPSHOT_GONE' && /snapshot snapshot-3 no longer exists/.test(e.message));
  } finally { await done(); }
});

test('changed areas of any size in replies that end before the capacity; a vCenter changeId goes out unchanged', async () => {
  const { r, vc, done } = await replayed({ answers: { QueryChangedDiskAreas: ['changed-areas-page-1.xml', 'changed-areas-page-2.xml'] } });
  const since = '52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/81';
  try {
    const q = await vc.changedAreas('vm-42', 'snapshot-3', 2000, since, 64 * MiB);
    assert.equal(q.calls, 2);
    assert.deepEqual(q.areas, [{ offset: 64 << 10, length: 128 << 10 }, { offset: 4 * MiB, length: 12 * MiB }, { offset: 20 * MiB, length: MiB },
      { offset: 64 * MiB - (64 << 10), length: 64 << 10 }]);
    const sent = r.requests.filter((x) => x.op === 'QueryChangedDiskAreas');
    assert.deepEqual(sent.map((x) => /<(?:\w+:)?startOffset>(\d+)</.exec(x.body)?.[1]), ['0', String(20 * MiB)], 'the second call starts where the first reply\'s coverage ends');
    for (const x of sent) assert.equal(/<(?:\w+:)?changeId>([^<]*)</.exec(x.body)?.[1], since, 'the changeId is sent as vCenter wrote it');
  } finally { await done(); }
});

test('faults parse whether their detail element is self-closing, open and closed, prefixed or untyped', () => {
  const env = (detail: string) => `<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault>` +
    `<faultcode>ServerFaultCode</faultcode><faultstring>The session is not authenticated.</faultstring>${detail}</soapenv:Fault></soapenv:Body></soapenv:Envelope>`;
  const forms = [
    '<detail><NotAuthenticatedFault xmlns="urn:vim25" xsi:type="NotAuthenticated"/></detail>',
    '<detail><NotAuthenticatedFault xmlns="urn:vim25" xsi:type="NotAuthenticated" /></detail>',
    '<detail><NotAuthenticatedFault xmlns="urn:vim25" xsi:type="NotAuthenticated"></NotAuthenticatedFault></detail>',
    '<detail><vim25:NotAuthenticatedFault xmlns:vim25="urn:vim25"/></detail>',
    '<detail><NotAuthenticatedFault xmlns="urn:vim25" xsi:type="vim25:NotAuthenticated"><object type="SessionManager">SessionManager</object></NotAuthenticatedFault></detail>',
    '',
  ];
  for (const f of forms) assert.equal(parseFault(env(f), 'RetrievePropertiesEx')?.type, 'NotAuthenticated', f);
  const noPerm = parseFault(fixture('fault-no-permission.xml'), 'RetrievePropertiesEx')!;
  assert.equal(noPerm.type, 'NoPermission');
  assert.equal(noPerm.detail.privilegeId, 'System.Read');
});

test('a self-closing NotAuthenticated fault logs in again and the call is retried with the new session', async () => {
  const { r, vc, done } = await replayed({ answers: { RetrievePropertiesEx: ['fault-not-authenticated-self-closing.xml', 'vm-escaped-snapshots.xml'] } });
  try {
    const objs = await methods.retrieveProperties(vc.session, [methods.objectsSpec([{ type: 'VirtualMachine', value: 'vm-42' }], [{ type: 'VirtualMachine', pathSet: ['name'] }])]);
    assert.equal(objs[0]?.obj.value, 'vm-42');
    assert.equal(vc.session.relogins, 1);
    assert.equal(r.count('Login'), 2);
    const retried = r.requests.filter((q) => q.op === 'RetrievePropertiesEx');
    assert.deepEqual(retried.map((q) => q.cookie), ['vmware_soap_session="replay-1"', 'vmware_soap_session="replay-2"']);
  } finally { await done(); }
});

test('a self-closing InvalidLogin fault is the clear login error', async () => {
  const r = await startReplay({ answers: { Login: 'fault-invalid-login-self-closing.xml' } });
  try {
    await assert.rejects(VCenter.connect({ server: r.url, user: 'vmlift', password: 'wrong', trust: { thumbprint: r.thumbprint } }),
      (e: Error & { code?: string }) => e.code === 'VC_LOGIN' && /rejected the user name or password/.test(e.message));
  } finally { await r.close(); }
});

test('the API version comes from /sdk/vimServiceVersions.xml and goes into every SOAPAction', async () => {
  for (const [versions, speaks] of [['versions-8.0.3.xml', '8.0.3.0'], ['versions-6.0.xml', '6.0'], ['versions-9.1.xml', MAX_API_VERSION]] as const) {
    const { r, vc, done } = await replayed({ versions });
    try {
      assert.equal(vc.session.apiVersion, speaks, versions);
      assert.ok(r.requests.length >= 2);
      for (const q of r.requests) assert.equal(q.soapAction, `"urn:vim25/${speaks}"`, `${versions}: ${q.op}`);
    } finally { await done(); }
  }
});

test('without a version listing the version is about.apiVersion', async () => {
  const { r, vc, done } = await replayed({ versions: null });
  try {
    assert.equal(vc.session.apiVersion, '8.0.3.0');
    assert.equal(r.requests.find((q) => q.op === 'Login')?.soapAction, '"urn:vim25/8.0.3.0"');
  } finally { await done(); }
});

test('a server older than 6.0 is refused with a clear unsupported-version error, not "not a vCenter"', async () => {
  const r = await startReplay({ versions: 'versions-5.5.xml' });
  try {
    await assert.rejects(VCenter.connect({ server: r.url, user: 'vmlift', password: 'secret', trust: { thumbprint: r.thumbprint } }),
      (e: Error & { code?: string }) => e.code === 'VC_UNSUPPORTED_VERSION' && e.message === 'unsupported vSphere version 5.5; vmlift needs 6.0 or later');
    assert.equal(r.count('Login'), 0, 'no password sent to a server vmlift refuses');
  } finally { await r.close(); }
});

test('parseServiceVersions reads the current urn:vim25 version, not a prior one', () => {
  assert.equal(parseServiceVersions(fixture('versions-8.0.3.xml')), '8.0.3.0');
  assert.equal(parseServiceVersions('<namespaces><namespace><name>urn:vim25</name><priorVersions><version>6.0</version></priorVersions><version>6.7.3</version></namespace></namespaces>'), '6.7.3');
  assert.equal(parseServiceVersions('<html>not here</html>'), null);
});

test('vm(ref) searches by name only when vCenter says the object does not exist', async () => {
  const gone = await replayed({ answers: { RetrievePropertiesEx: ['fault-object-not-found.xml', 'vm-escaped-snapshots.xml'] } });
  try {
    const vm = await gone.vc.vm('vm-42');
    assert.equal(vm.ref, 'vm-42');
    assert.equal(gone.r.count('CreateContainerView'), 1, 'the name search ran');
  } finally { await gone.done(); }
  const denied = await replayed({ answers: { RetrievePropertiesEx: ['fault-no-permission.xml', 'vm-escaped-snapshots.xml'] } });
  try {
    await assert.rejects(denied.vc.vm('vm-42'), (e: Error) => e instanceof VimFault && e.type === 'NoPermission');
    assert.equal(denied.r.count('CreateContainerView'), 0, 'no name search after a permission fault');
  } finally { await denied.done(); }
});

test('snapshot names are shown unescaped (%252f is /, %25 is %)', () => {
  assert.equal(unescapeName('backup%252fnightly'), 'backup/nightly');
  assert.equal(unescapeName('a%2Fb%5cc 100%25'), 'a/b\\c 100%');
  assert.equal(unescapeName('50%20off %41'), '50%20off %41', 'only what vCenter escapes is decoded');
});

const byObject = (body: string) => (/type="Task"/.test(body) ? 'task-success.xml' : 'vm-escaped-snapshots.xml');

test('snapshot names arrive escaped and are listed and swept unescaped', async () => {
  const { r, vc, done } = await replayed({ answers: { RetrievePropertiesEx: byObject, RemoveSnapshot_Task: 'remove-snapshot-task.xml' } });
  try {
    const { snapshots } = await vc.snapshots('vm-42');
    const names = (ns: typeof snapshots): string[] => ns.flatMap((n) => [n.name, ...names(n.children)]);
    assert.deepEqual(names(snapshots), ['backup/nightly 100%', 'vmlift-cycle/1', 'vmlift-plain']);
    const cycle = await vc.sweepSnapshots('vm-42', 'vmlift-cycle/');
    assert.deepEqual(cycle.removed, ['vmlift-cycle/1']);
    const all = await vc.sweepSnapshots('vm-42');
    assert.deepEqual(all.removed, ['vmlift-plain', 'vmlift-cycle/1'], 'deepest first, the foreign snapshot kept');
    const targets = r.requests.filter((q) => q.op === 'RemoveSnapshot_Task').map((q) => />(snapshot-\d+)</.exec(q.body)?.[1]);
    assert.deepEqual(targets, ['snapshot-2', 'snapshot-3', 'snapshot-2']);
  } finally { await done(); }
});

test('a VM whose config comes back in missingSet (NoPermission) fails preflight naming the privilege; it is not "0 disks, preflight ok"', async () => {
  const { vc, done } = await replayed({ answers: { RetrievePropertiesEx: 'vm-config-no-permission.xml' } });
  try {
    const vm = await vc.vm('vm-42');
    assert.deepEqual(vm.unreadable, [
      { path: 'config.hardware.device', fault: 'NoPermission', privilege: 'System.Read' },
      { path: 'config.extraConfig', fault: 'NoPermission', privilege: 'System.Read' },
    ]);
    const r = preflight(vm);
    assert.equal(r.ok, false);
    const bad = r.checks.filter((c) => !c.ok);
    assert.deepEqual(bad.map((c) => c.name), ['readable']);
    assert.match(bad[0]!.message, /config\.hardware\.device[^;(]* \(NoPermission: privilege System\.Read\)/);
    assert.match(bad[0]!.fix!, /grant the vmlift user System\.Read on db01/);
  } finally { await done(); }
});
