/**
 * Issue 14 part 1's acceptance: one workgroup holds two lab VMs and two agent sources, each agent a
 * real `vmlift agent serve` process reading a plain file as its device and dialling out to the
 * connector's agent hub (TLS, pinned, token). The workgroup runs a full sync, an incremental sync,
 * a pause in the middle of an agent's cycle and a resume (the same cycle, resumed), a live bandwidth
 * change, and completes with the final sync (and, for one VM and one agent, without); every image is bit-identical and `job show` shows both
 * kinds the same way. Then the failure paths: an agent that is not connected, a preflight failure,
 * a device the agent does not allow, a wrong token.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, openSync, writeSync, closeSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startRig, settings, liveSha, imageSha, guestWrites, type EngineRig } from './harness.ts';
import { VMLIFT, vmlift } from '../agent/harness.ts';
import { AgentRegistry } from '../../src/engine/agent-registry.ts';
import { AgentHub } from '../../src/engine/agent-hub.ts';
import { AgentSources } from '../../src/engine/agent-source.ts';
import { loadOrCreateAgentTls } from '../../src/engine/agent-tls.ts';
import { ConnectorApi } from '../../src/engine/api.ts';
import { Workgroups } from '../../src/engine/workgroups.ts';
import { Scheduler } from '../../src/engine/scheduler.ts';
import { EngineMetrics } from '../../src/engine/metrics.ts';
import { ConnectorLink } from '../../src/agent/connector-link.ts';
import { silentLogger } from '../../src/util/log.ts';
import type { JobState } from '../../src/state/types.ts';
import { canMount, smallFs } from '../util/small-fs.ts';

const MiB = 1 << 20;
const FILE_SIZE = 16 * MiB;
const dir = mkdtempSync(join(tmpdir(), 'vmlift-agent-wg-'));
let rig: EngineRig;
let hub: AgentHub;
let registry: AgentRegistry;
let sources: AgentSources;
let api: ConnectorApi;
let scheduler: Scheduler;
const agents = new Map<string, { proc: ChildProcess; stderr: string; file: string; stateDir: string }>();

const fileSha = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');
function scribble(path: string, count: number, size = 64 * 1024): void {
  const fd = openSync(path, 'r+');
  try {
    for (let i = 0; i < count; i++) writeSync(fd, randomBytes(size), 0, size, Math.floor(Math.random() * (FILE_SIZE / size)) * size);
  } finally { closeSync(fd); }
}

async function startAgent(id: string, devices: string[], extra: string[] = []): Promise<void> {
  const tokenFile = join(dir, `${id}.token`);
  await registry.addAgent(id, tokenFile);
  const stateDir = join(dir, `state-${id}`);
  const proc = spawn(VMLIFT, ['agent', 'serve', '--connector', `https://127.0.0.1:${hubPort}`, '--connector-fingerprint', hub.fingerprint,
    '--agent-id', id, '--token-file', tokenFile, '--state-dir', stateDir, '--progress-ms', '200', '--log-level', 'info',
    ...devices.flatMap((d) => ['--device', d]), ...extra], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, VMLIFT_FROM_SOURCE: '1', VMLIFT_AGENT_CONFIG: join(dir, 'no-agent.json') } });
  const a = { proc, stderr: '', file: devices[0]!, stateDir };
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => { a.stderr += d; });
  agents.set(id, a);
}
let hubPort = 0;

async function until(what: string, pred: () => boolean, ms = 90_000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(rig.state.listJobs().map((j) => [j.id, j.state, j.error?.message]))}\n${[...agents.values()].map((a) => a.stderr.slice(-3000)).join('\n')}`);
    await sleep(100);
  }
}

const MEMBERS = ['vm-a', 'vm-b', 'web01', 'web02'];
const stateOf = (id: string): JobState => rig.engine.getJob(id).state;
const allIn = (states: JobState[]) => () => MEMBERS.every((m) => states.includes(stateOf(m)) && !rig.engine.isRunning(m));

before(async () => {
  // Fails when the file is there but invalid: none is, so flags alone configure the agents.
  writeFileSync(join(dir, 'no-agent.json'), '{}');
  registry = new AgentRegistry(join(dir, 'agents'));
  hub = new AgentHub({ registry, logger: silentLogger, tls: await loadOrCreateAgentTls(join(dir, 'agent-tls')), lostAfterMs: 30_000 });
  hubPort = (await hub.listen(0, '127.0.0.1')).port;
  rig = await startRig({
    vms: 2, diskMb: 16,
    agents: async (rx) => {
      sources = new AgentSources({ hub, registry, receiver: { address: `127.0.0.1:${rx.rx.controlPort}`, fingerprint: rx.rx.fingerprint, dataPort: rx.rx.dataPort }, activationCode: rx.code, offlineWaitMs: 300 });
      return sources;
    },
  });
  const metrics = new EngineMetrics(rig.state);
  api = new ConnectorApi({ engine: rig.engine, workgroups: new Workgroups(rig.engine), metrics, logger: silentLogger, token: 'test-token', resolveVm: async (n) => ({ vmRef: rig.lab.vm(n).moref, name: n }),
    images: async (sourceId) => { const x = await rig.rx.sender(sourceId); try { return await x.listImages(); } finally { await x.close(); } },
    agents: { hub, registry, sources } });
  const home = join(dir, 'home');
  const { port } = await api.listen(0);
  rmSync(home, { recursive: true, force: true });
  await import('node:fs/promises').then(async (fs) => {
    await fs.mkdir(home, { recursive: true });
    await fs.writeFile(join(home, 'api.json'), JSON.stringify({ port }));
    await fs.writeFile(join(home, 'api-token'), 'test-token\n', { mode: 0o600 });
  });
  scheduler = new Scheduler(rig.engine, { logger: silentLogger, tickMs: 100 });
});

after(async () => {
  await scheduler?.stop({ abort: true });
  for (const a of agents.values()) a.proc.kill('SIGKILL');
  await api?.close();
  await hub?.close();
  await rig?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('a workgroup of two VMs and two agent sources: full, incremental, pause and resume mid-cycle, live bandwidth, complete; every image bit-identical', async () => {
  const { lab, engine, rx, state } = rig;
  const home = join(dir, 'home');
  const vms = lab.vms.filter((v) => /^vm-\d+$/.test(v.name)).slice(0, 2);
  assert.equal(vms.length, 2);
  const files = ['web01', 'web02'].map((id) => join(dir, `${id}.img`));
  for (const f of files) writeFileSync(f, randomBytes(FILE_SIZE));
  // web02 also allows a device that is not there (the failure test's preflight).
  await Promise.all([startAgent('web01', [files[0]!]), startAgent('web02', [files[1]!, join(dir, 'not-there.img')])]);

  engine.createJob({ id: 'vm-a', vmRef: vms[0]!.moref, settings: settings() });
  engine.createJob({ id: 'vm-b', vmRef: vms[1]!.moref, settings: settings() });
  // Agent jobs through the connector API, as `vmlift job create web01 --agent web01 --devices FILE` makes them.
  state.putTemplate('agents', { compression: 3, checksum: true, maxImages: 5 });
  for (const [i, id] of ['web01', 'web02'].entries()) {
    const r = await vmlift(['job', 'create', id, '--agent', id, '--devices', files[i]!, '--template', 'agents', '--home', home, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { kind: string; settings: { compression: number; maxImages: number } };
    assert.equal(j.kind, 'agent');
    assert.equal(j.settings.maxImages, 5, 'the template applies to agent jobs');
  }
  const wg = new Workgroups(engine);
  wg.create('wave', 'Wave-1');
  assert.ok(wg.add('wave', MEMBERS).every((m) => m.ok));
  await until('agents connected', () => hub.online('web01') && hub.online('web02'));
  const reported = hub.list().find((a) => a.id === 'web01')!;
  assert.ok(reported.devices.some((d) => d.path === files[0] && d.size === FILE_SIZE && d.configured), JSON.stringify(reported.devices));

  const expectations = async () => ({
    vm: await Promise.all(vms.map((v) => liveSha(lab, v.name, v.disks[0]!.key, v.disks[0]!.capacity))),
    file: files.map(fileSha),
  });
  const checkImages = async (what: string, want: Awaited<ReturnType<typeof expectations>>) => {
    for (const [i, id] of ['vm-a', 'vm-b'].entries()) {
      const c = state.listCycles(id).find((x) => x.state === 'committed')!;
      assert.equal(await imageSha(rx, id, c.imageId!, 0, vms[i]!.disks[0]!.capacity), want.vm[i], `${what}: ${id}`);
    }
    for (const [i, id] of ['web01', 'web02'].entries()) {
      const c = state.listCycles(id).find((x) => x.state === 'committed')!;
      assert.equal(await imageSha(rx, id, c.imageId!, 0, FILE_SIZE), want.file[i], `${what}: ${id}`);
    }
  };

  // Full sync.
  for (const v of vms) await guestWrites(lab, v.name, v.disks[0]!.key, v.disks[0]!.capacity, 8);
  let want = await expectations();
  assert.ok(wg.batch('wave', 'start').every((m) => m.ok));
  scheduler.start();
  await until('the full sync', allIn(['waiting', 'error']));
  assert.deepEqual(MEMBERS.map(stateOf), ['waiting', 'waiting', 'waiting', 'waiting'], JSON.stringify(MEMBERS.map((m) => engine.getJob(m).error)));
  await checkImages('full', want);
  for (const id of ['web01', 'web02']) assert.equal(state.listCycles(id)[0]!.kind, 'full');

  // Incremental: a few changed blocks; the agents send only those.
  for (const v of vms) await guestWrites(lab, v.name, v.disks[0]!.key, v.disks[0]!.capacity, 2);
  for (const f of files) scribble(f, 3);
  want = await expectations();
  assert.ok(wg.batch('wave', 'sync').every((m) => m.ok));
  await until('the incremental sync', allIn(['waiting', 'error']));
  await checkImages('incremental', want);
  for (const id of ['web01', 'web02']) {
    const c = state.listCycles(id)[0]!;
    assert.equal(c.kind, 'incremental');
    assert.ok(c.wireBytes < 3 * 64 * 1024 * 1.2 && c.wireBytes > 0, `${id}: the incremental sent the changed blocks only (${c.wireBytes} wire bytes)`);
    assert.equal(c.sourceBytesRead, FILE_SIZE, `${id}: the agent read the device once`);
  }

  // Pause in the middle of an agent's cycle, then resume: the same cycle resumes and commits.
  for (const f of files) scribble(f, 96); // 6 MiB each
  for (const v of vms) await guestWrites(lab, v.name, v.disks[0]!.key, v.disks[0]!.capacity, 2);
  for (const id of ['web01', 'web02']) engine.updateSettings(id, { bandwidthMbps: 8 }); // ~1 MB/s: the cycle takes ~6 s
  want = await expectations();
  assert.ok(wg.batch('wave', 'sync').every((m) => m.ok));
  await until('web01 sending', () => {
    const l = engine.live('web01');
    return !!l && l.step === 'transfer' && l.disks.some((d) => d.done > 0);
  });
  await sleep(1000);
  const before = engine.live('web01')!;
  assert.equal(before.disks[0]!.total, FILE_SIZE, 'progress streams from the agent: the device\'s size');
  assert.equal(before.disks[0]!.transport, 'agent');
  const pausedCycle = engine.live('web01')!.cycleId;
  const paused = wg.batch('wave', 'pause');
  assert.ok(paused.every((m) => m.ok && m.state === 'paused'), JSON.stringify(paused));
  await until('the agent cycles to stop', () => !engine.isRunning('web01') && !engine.isRunning('web02'));
  await until('the agent to unwind', () => agents.get('web01')!.stderr.split('\n').some((l) => l.includes('cycle run ended') && l.includes(pausedCycle)), 20_000);
  const open = JSON.parse(readFileSync(join(agents.get('web01')!.stateDir, 'sources', 'web01', 'state.json'), 'utf8')) as { openCycle: { cycleId: string } | null };
  assert.equal(open.openCycle?.cycleId, pausedCycle, `the agent keeps the open cycle to resume: ${agents.get('web01')!.stderr.slice(-4000)}`);
  await sleep(500);
  assert.equal(stateOf('web01'), 'paused');
  assert.ok(wg.batch('wave', 'resume').every((m) => m.ok));
  await until('web01 sending again', () => engine.live('web01')?.step === 'transfer');
  // Live: lift the limit while the resumed cycle runs.
  engine.updateSettings('web01', { bandwidthMbps: 0 });
  engine.updateSettings('web02', { bandwidthMbps: 0 });
  await until('the resumed cycles', allIn(['waiting', 'error']), 120_000);
  assert.deepEqual(MEMBERS.map(stateOf), ['waiting', 'waiting', 'waiting', 'waiting'], JSON.stringify(MEMBERS.map((m) => engine.getJob(m).error)));
  await checkImages('after pause and resume', want);
  const resumed = state.listCycles('web01').find((c) => c.id === pausedCycle)!;
  assert.equal(resumed.state, 'committed', 'the paused cycle itself resumed and committed');
  assert.match(agents.get('web01')!.stderr, /settings changed by the connector/);

  // Complete: one VM and one agent source without a final sync (on their last image: the writes below
  // are not in it), then the workgroup, whose other two members run the final sync.
  const beforeFinal = want;
  for (const v of vms) await guestWrites(lab, v.name, v.disks[0]!.key, v.disks[0]!.capacity, 2);
  for (const f of files) scribble(f, 4);
  want = await expectations();
  for (const id of ['vm-b', 'web02']) assert.equal(engine.complete(id, { finalSync: false }).state, 'completed', id);
  const completing = wg.batch('wave', 'complete');
  assert.deepEqual(completing.map((m) => [m.jobId, m.ok, m.ok ? m.state : m.code]),
    [['vm-a', true, 'completing'], ['vm-b', false, 'ALREADY_COMPLETED'], ['web01', true, 'completing'], ['web02', false, 'ALREADY_COMPLETED']]);
  await until('completion', allIn(['completed', 'error']));
  assert.deepEqual(MEMBERS.map(stateOf), ['completed', 'completed', 'completed', 'completed'], JSON.stringify(MEMBERS.map((m) => engine.getJob(m).error)));
  await checkImages('final', { vm: [want.vm[0]!, beforeFinal.vm[1]!], file: [want.file[0]!, beforeFinal.file[1]!] });
  assert.notEqual(want.file[1], beforeFinal.file[1], 'the writes after the last cycle changed web02 (so its image proves no final sync ran)');
  assert.ok(!state.listCycles('web02').some((c) => c.kind === 'final'), 'web02 completed without a final sync');
  const sync = wg.batch('wave', 'sync');
  assert.ok(sync.every((m) => !m.ok), 'a completed member takes no sync');

  // `job show` shows both kinds the same way: the same fields, the same cycle kinds, images, disks.
  const show = async (id: string) => {
    const r = await vmlift(['job', 'show', id, '--home', home, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const text = await vmlift(['job', 'show', id, '--home', home]);
    assert.equal(text.code, 0, text.stderr);
    return { v: JSON.parse(r.stdout) as { job: { state: string; kind: string }; disks: { capacity: number; transport: string }[]; cycles: { kind: string; state: string }[]; images: unknown[] }, text: text.stdout };
  };
  const a = await show('vm-a');
  const b = await show('web01');
  assert.deepEqual(Object.keys(b.v).sort(), Object.keys(a.v).sort());
  assert.deepEqual(b.v.cycles.map((c) => `${c.kind}:${c.state}`), a.v.cycles.map((c) => `${c.kind}:${c.state}`));
  assert.deepEqual(b.v.cycles.map((c) => c.kind), ['final', 'incremental', 'incremental', 'full']);
  assert.equal(b.v.job.kind, 'agent');
  assert.equal(b.v.disks[0]!.capacity, FILE_SIZE);
  assert.equal(b.v.disks[0]!.transport, 'agent');
  assert.ok(b.v.images.length >= 1 && a.v.images.length >= 1, `images: ${JSON.stringify([a.v.images, b.v.images]).slice(0, 500)}`);
  const headers = (t: string) => t.split('\n').filter((l) => /^(DISK|CYCLE|IMAGE)\s/.test(l)).map((l) => l.split(/\s+/).join(' '));
  assert.deepEqual(headers(b.text), headers(a.text));
  assert.match(b.text, /^job web01 \(web01\) {2}agent web01 {2}state completed/m);
  // Both kinds count in the metrics.
  const metrics = await new EngineMetrics(state).registry.metrics();
  assert.match(metrics, /vmlift_jobs\{state="completed"\} 4/);
});

test('agent failures keep their fix: an agent not connected, a failed preflight, a device the agent does not allow, a wrong token', async () => {
  const { engine } = rig;
  await registry.addAgent('ghost', join(dir, 'ghost.token'));
  const missing = join(dir, 'not-there.img');
  for (const [id, agent, devices] of [['offline', 'ghost', []], ['no-device', 'web02', [missing]], ['sneaky', 'web01', ['/etc/passwd']]] as const) {
    const r = await vmlift(['job', 'create', id, '--agent', agent, ...(devices.length ? ['--devices', devices.join(',')] : []), '--home', join(dir, 'home'), '--json']);
    assert.equal(r.code, 0, r.stderr);
    engine.start(id);
  }
  await until('the three jobs to fail', () => ['offline', 'no-device', 'sneaky'].every((j) => stateOf(j) === 'error'));
  const off = engine.getJob('offline').error!;
  assert.equal(off.code, 'AGENT_OFFLINE');
  assert.equal(off.step, 'connect');
  assert.match(off.fix!, /vmlift agent serve .*--agent-id ghost/);
  assert.equal(off.attempts, 3, 'an offline agent is retried like a transient error');
  const pre = engine.getJob('no-device').error!;
  assert.equal(pre.code, 'AGENT_CHECK');
  assert.equal(pre.step, 'preflight');
  assert.match(pre.message, /not-there\.img cannot be read/);
  assert.match(pre.fix!, /check that .*not-there\.img exists/);
  assert.match(pre.fix!, /--ignore-check/);
  const sneaky = engine.getJob('sneaky').error!;
  assert.equal(sneaky.code, 'DEVICE_NOT_ALLOWED');
  assert.match(sneaky.fix!, /"devices"/);
  // Images of an agent source are its agent's: delete refuses --remove-images with the fix, deletes without.
  const del = await vmlift(['job', 'delete', 'offline', '--remove-images', '--home', join(dir, 'home')]);
  assert.equal(del.code, 1);
  assert.match(del.stderr, /is an agent source/);
  assert.match(del.stderr, /fix: delete the job without --remove-images/);
  assert.equal((await vmlift(['job', 'delete', 'offline', '--home', join(dir, 'home')])).code, 0);
  const listed = await vmlift(['connector', 'agents', '--home', join(dir, 'home'), '--json']);
  assert.equal(listed.code, 0, listed.stderr);
  const ghost = (JSON.parse(listed.stdout) as { id: string; online: boolean; jobs: string[] }[]).find((x) => x.id === 'ghost')!;
  assert.deepEqual([ghost.online, ghost.jobs], [false, []]);
  // Unknown agent at job creation.
  const r = await vmlift(['job', 'create', 'nobody', '--agent', 'nobody', '--home', join(dir, 'home')]);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /no agent named nobody/);
  assert.match(r.stderr, /fix: add it with `vmlift connector add-agent nobody/);
  // A wrong token is refused before anything else.
  const link = new ConnectorLink({ url: `https://127.0.0.1:${hubPort}`, fingerprint: hub.fingerprint, agentId: 'web01', token: 'not-the-token' });
  await assert.rejects(link.hello({ agentId: 'web01', hostname: 'x', version: '0', devices: [], defaultDevices: [], credentials: [] }), (e: Error & { code?: string }) => e.code === 'UNAUTHORIZED');
  // A wrong connector fingerprint: nothing is sent.
  const wrong = new ConnectorLink({ url: `https://127.0.0.1:${hubPort}`, fingerprint: 'ab'.repeat(32), agentId: 'web01', token: 'x' });
  await assert.rejects(wrong.commands(0), (e: Error & { code?: string }) => e.code === 'FINGERPRINT_MISMATCH');
});

test('a failed preflight blocks the first cycle with its fix; agent serve --ignore-check forces past it', async (t) => {
  if (!canMount()) { t.skip('needs root for a small tmpfs'); return; }
  const { engine, rx } = rig;
  // 8 MiB for the agent's state: the check wants the digests' room plus 64 MiB; the cycle itself needs far less.
  const fs = smallFs(t, 8);
  const device = join(dir, 'tight.img');
  writeFileSync(device, randomBytes(4 * MiB));
  await startAgent('tight', [device], ['--state-dir', fs.dir]);
  await until('tight connected', () => hub.online('tight'));
  const r = await vmlift(['job', 'create', 'tight', '--agent', 'tight', '--home', join(dir, 'home'), '--json']);
  assert.equal(r.code, 0, r.stderr);
  engine.start('tight');
  await until('the preflight to fail', () => stateOf('tight') === 'error');
  const e = engine.getJob('tight').error!;
  assert.equal(e.code, 'AGENT_CHECK');
  assert.equal(e.step, 'preflight');
  assert.match(e.message, /state space: .* MiB free; the block digests of 4 MiB of devices need 65 MiB/);
  assert.match(e.fix!, /--state-dir/);
  assert.equal(rig.state.listCycles('tight').filter((c) => c.state === 'committed').length, 0);

  const old = agents.get('tight')!;
  old.proc.kill('SIGTERM');
  await new Promise((res) => old.proc.once('exit', res));
  await startAgent('tight', [device], ['--state-dir', fs.dir, '--ignore-check']);
  await until('tight reconnected', () => agents.get('tight')!.stderr.includes('connected to the connector'));
  engine.resume('tight');
  await until('the forced first cycle', () => stateOf('tight') === 'waiting' || (stateOf('tight') === 'error' && !engine.isRunning('tight') && engine.getJob('tight').error?.at !== e.at));
  assert.equal(stateOf('tight'), 'waiting', JSON.stringify(engine.getJob('tight').error));
  const c = rig.state.listCycles('tight')[0]!;
  assert.equal(await imageSha(rx, 'tight', c.imageId!, 0, 4 * MiB), fileSha(device));
});
