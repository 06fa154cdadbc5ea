/**
 * The one transient classifier (util/errors.ts isTransient) against every case the engine's and the
 * agent's own classifiers called transient before they were removed, and the errors that must stay
 * final. Where a case has a real throw site, the error comes from it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CodedError, UserError, errorReport, isTransient } from '../../src/util/errors.ts';
import { VimFault, faultToUserError, parseFault, taskFailed, unreachable } from '../../src/vsphere/errors.ts';
import { waitForTask } from '../../src/vsphere/tasks.ts';
import type { VimSession } from '../../src/vsphere/session.ts';
import { ConnectError, connectPinned } from '../../src/transfer/connect.ts';
import { RemoteError } from '../../src/transfer/control-client.ts';
import { ProtocolError, parseJsonBody } from '../../src/transfer/protocol.ts';
import { openImageStore, StoreError } from '../../src/store/index.ts';
import { StateError } from '../../src/state/types.ts';
import { Refusal, refusalFrom } from '../../src/receiver/open-cycles.ts';
import { CycleError } from '../../src/engine/vm-cycle.ts';

const sysError = (code: string): Error => Object.assign(new Error(`${code} (raw)`), { code });

/** What a refusal becomes at the sender: the body the receiver sends, read back by the control client. */
const overTheWire = (r: Refusal): RemoteError => new RemoteError(r.status, JSON.parse(JSON.stringify(errorReport(r))));

/** A session whose task poll answers `state` (and an error for state 'error'). */
/** A session whose PropertyCollector answers one Task in `state` (the XML a vCenter sends). */
function taskSession(state: string): VimSession {
  const error = state === 'error'
    ? '<propSet><name>info.error</name><val xsi:type="LocalizedMethodFault"><localizedMessage>the file is locked</localizedMessage></val></propSet>' : '';
  const xml = '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    + '<soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="Task">task-1</obj>'
    + `<propSet><name>info.state</name><val xsi:type="TaskInfoState">${state}</val></propSet>${error}`
    + '</objects></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>';
  return {
    content: { propertyCollector: { type: 'PropertyCollector', value: 'pc' } },
    callText: async () => xml,
  } as unknown as VimSession;
}

async function refusedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

test('system errors a retry can clear are transient, raw or as a cause', () => {
  // the engine's list and the agent's network codes
  for (const code of ['ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ECONNABORTED',
    'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'ERR_SOCKET_CLOSED', 'ERR_STREAM_PREMATURE_CLOSE', 'ERR_STREAM_DESTROYED']) {
    assert.ok(isTransient(sysError(code)), code);
    assert.ok(isTransient(new Error(`vCenter call failed: ${code}`, { cause: sysError(code) })), `${code} as a cause`);
    assert.ok(isTransient(new UserError('WRAPPED', 'w', undefined, { cause: new Error('mid', { cause: sysError(code) }) })), `${code} two causes down`);
  }
  assert.ok(isTransient({ transient: true }), 'anything that says transient: true');
});

test('vSphere faults that clear up by themselves, and vmlift vCenter codes', async () => {
  for (const type of ['NotAuthenticated', 'TaskInProgress', 'ConcurrentAccess', 'InvalidState']) {
    const f = new VimFault(type, 'busy', 'CreateSnapshot_Task', {});
    assert.ok(isTransient(f), type);
    assert.ok(isTransient(new CycleError('snapshot', f)), `${type} in a cycle step`);
  }
  const parsed = parseFault('<soapenv:Fault><faultstring>The session is not authenticated.</faultstring><detail><NotAuthenticatedFault xsi:type="NotAuthenticated"></NotAuthenticatedFault></detail></soapenv:Fault>', 'RetrievePropertiesEx');
  assert.ok(parsed && parsed.type === 'NotAuthenticated' && isTransient(parsed), 'a parsed NotAuthenticated fault');
  assert.ok(isTransient(faultToUserError(new VimFault('NotAuthenticated', 'x', 'Login', {}))), 'VC_SESSION keeps its fault as cause');

  const failed = await waitForTask(taskSession('error'), { type: 'Task', value: 'task-1' }, { what: 'creating snapshot' }).catch((e: unknown) => e);
  assert.ok(failed instanceof UserError && failed.code === 'VC_TASK_FAILED' && isTransient(failed), String(failed));
  assert.ok(isTransient(new CycleError('snapshot', failed)), 'VC_TASK_FAILED in a cycle step');
  const late = await waitForTask(taskSession('running'), { type: 'Task', value: 'task-1' }, { timeoutMs: -1 }).catch((e: unknown) => e);
  assert.ok(late instanceof UserError && late.code === 'VC_TASK_TIMEOUT' && isTransient(late), String(late));
  assert.ok(isTransient(taskFailed('removing snapshot', 'locked')), 'VC_TASK_FAILED');
  const down = unreachable('https://vc/sdk', sysError('ENOTFOUND'));
  assert.ok(down.code === 'VC_UNREACHABLE' && isTransient(down), 'VC_UNREACHABLE (even when its cause is not)');
});

test('a receiver that cannot be reached, or is busy, is transient', async () => {
  const port = await refusedPort();
  const e = await connectPinned({ host: '127.0.0.1', port, fingerprint: '0'.repeat(64), timeoutMs: 5000 }).catch((x: unknown) => x);
  assert.ok(e instanceof ConnectError && e.code === 'RECEIVER_UNREACHABLE' && isTransient(e), String(e));
  assert.ok(isTransient(new CycleError('transfer', e)), 'RECEIVER_UNREACHABLE in a cycle step');

  // a cycle closed under the writer: the store says CYCLE_CLOSED; the sender reads the refusal as transient
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-errors-'));
  try {
    const store = await openImageStore(join(dir, 'store'));
    try {
      const w = await store.beginCycle({ sourceId: 'src', cycleId: 'c1', disks: [{ disk: 0, capacity: 1 << 20 }] });
      await w.abort();
      const closed = await w.writeExtent(0, 0, 4096, Buffer.alloc(4096, 1)).catch((x: unknown) => x);
      assert.ok(closed instanceof StoreError && closed.code === 'CYCLE_CLOSED' && isTransient(closed), String(closed));
      const remote = overTheWire(refusalFrom(closed)!);
      assert.ok(remote.code === 'CYCLE_CLOSED' && remote.status === 409 && isTransient(remote), 'CYCLE_CLOSED over the wire');
      assert.ok(remote.fix, 'with its fix');
      const missing = await store.getImage('src', '99').catch((x: unknown) => x);
      assert.ok(missing instanceof StoreError && missing.code === 'NOT_FOUND' && !isTransient(missing), 'a missing image is final');
      assert.ok(!isTransient(overTheWire(refusalFrom(missing)!)), 'also over the wire');
    } finally {
      await store.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  for (const code of ['CYCLE_BUSY', 'PINNED']) {
    assert.ok(isTransient(overTheWire(refusalFrom(new StoreError(code, 'busy', { transient: true }))!)), `${code} over the wire`);
  }
});

test('errors no retry can clear stay final', () => {
  const finals: unknown[] = [
    new StoreError('MISSING_EXTENTS', 'gap'),
    new StateError('NO_JOB', 'no job x'),
    new UserError('BAD_SETTING', 'bad', 'fix it'),
    new VimFault('NoPermission', 'no', 'CreateSnapshot_Task', {}),
    new VimFault('InvalidLogin', 'no', 'Login', {}),
    overTheWire(new Refusal(401, 'AUTH', 'wrong credential')),
    overTheWire(new Refusal(409, 'CYCLE_OPEN', 'open')),
    new TypeError('x is not a function'),
    new Error('plain'),
    sysError('ENOENT'),
    'a string',
    undefined,
  ];
  for (const e of finals) assert.ok(!isTransient(e), String(e));
  assert.throws(() => parseJsonBody(Buffer.from('{')), (e: unknown) => e instanceof ProtocolError && !isTransient(e) && !!e.fix);
});

test('errorReport carries code, message and fix, through a cycle step too', () => {
  const user = new UserError('PREFLIGHT', 'preflight failed: the VM has snapshots', 'remove the snapshots');
  assert.deepEqual(errorReport(user), { code: 'PREFLIGHT', message: 'preflight failed: the VM has snapshots', fix: 'remove the snapshots' });
  const step = new CycleError('preflight', user);
  assert.ok(step instanceof CodedError);
  assert.deepEqual(errorReport(step), { code: 'PREFLIGHT', message: 'preflight: preflight failed: the VM has snapshots', fix: 'remove the snapshots' });
  assert.deepEqual(errorReport(new CycleError('snapshot', taskFailed('creating snapshot', 'locked'))).transient, true);
  assert.deepEqual(errorReport(new CycleError('plan', new Error('boom'))), { code: 'INTERNAL', message: 'plan: boom' });
  assert.equal(JSON.stringify(new StateError('NO_JOB', 'no job x', { fix: 'list jobs' })), '{"code":"NO_JOB","message":"no job x","fix":"list jobs"}');
});
