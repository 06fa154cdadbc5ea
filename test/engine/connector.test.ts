import { test } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startLab, type Lab } from '../../lab/lab.ts';
import { startTestReceiver, type TestRx } from '../transfer/helpers.ts';
import { VCenter } from '../../src/vsphere/index.ts';
import { liveSha, imageSha, guestWrites, MiB } from './harness.ts';
import { vmlift } from '../vsphere/helpers.ts';
import { connectorProcess, initConnector } from './connector-process.ts';


interface Rig { lab: Lab; rx: TestRx; home: string; vc: VCenter; serve(env?: NodeJS.ProcessEnv): Promise<ChildProcess>; api<T>(args: string[]): Promise<T>; close(): Promise<void> }

async function rig(): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-connector-'));
  const lab = await startLab({ dir: join(dir, 'lab'), vms: 0, diskMb: 64 });
  const rx = await startTestReceiver();
  const home = join(dir, 'home');
  await initConnector(dir, lab, rx);
  assert.ok(!readFileSync(join(home, 'config.json'), 'utf8').includes(rx.code), 'the config holds no secret');
  const vc = await VCenter.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } });
  const proc = connectorProcess(home);
  return {
    lab, rx, home, vc,
    serve: proc.serve,
    api: proc.api,
    async close() {
      proc.kill();
      await vc.close().catch(() => undefined);
      await rx.close();
      await lab.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

interface JobView { job: { state: string; sourceId: string; error: unknown }; cycles: { kind: string; state: string; imageId: string | null; sourceBytesRead: number; changedBytes: number }[]; live: { cycleId: string; step: string; disks: { done: number; total: number }[] } | null }

async function waitFor(r: Rig, id: string, pred: (v: JobView) => boolean, what: string, ms = 120_000): Promise<JobView> {
  const end = Date.now() + ms;
  let v: JobView | undefined;
  while (Date.now() < end) {
    // Polls the API directly (the CLI's `job show --json` prints the same document) to keep the test quick.
    const port = JSON.parse(readFileSync(join(r.home, 'api.json'), 'utf8')).port;
    const token = readFileSync(join(r.home, 'api-token'), 'utf8').trim();
    v = await (await fetch(`http://127.0.0.1:${port}/v1/jobs/${id}`, { headers: { authorization: `Bearer ${token}` } })).json() as JobView;
    if (pred(v)) return v;
    await sleep(150);
  }
  throw new Error(`timed out waiting for ${what}: ${JSON.stringify(v)}`);
}

function killed(p: ChildProcess): Promise<void> {
  return new Promise((resolve) => { if (p.exitCode !== null || p.signalCode !== null) resolve(); else p.once('exit', () => resolve()); });
}

test('kill -9 of the connector during a read and right after the receiver committed: both resume to correct images, no snapshot left', async (t) => {
  const r = await rig();
  t.after(() => r.close());
  const vm = r.lab.vm('two-disks');
  for (const d of vm.disks) await guestWrites(r.lab, vm.name, d.key, d.capacity, 200);
  const expected = await Promise.all(vm.disks.map((d) => liveSha(r.lab, vm.name, d.key, d.capacity)));

  let serve = await r.serve();
  // 32 Mbps (4 MB/s) keeps the first cycle's ~24 MiB on the wire for about 6 s.
  // a job starts when it is created (no `job start`)
  const created1 = await r.api<{ state: string }>(['job', 'create', 'mig', '--vm', 'two-disks', '--compression', '0', '--bandwidth', '32', '--max-images', '5']);
  assert.equal(created1.state, 'syncing');
  const during = await waitFor(r, 'mig', (v) => !!v.live?.disks.length && v.live.disks.reduce((n, d) => n + d.done, 0) > 4 * MiB, 'reading');
  const total = during.live!.disks.reduce((n, d) => n + d.total, 0);
  // Reads run ahead of the wire by the sender's window: give the wire a moment, then kill.
  await sleep(1500);
  serve.kill('SIGKILL');
  await killed(serve);
  // The receiver keeps (flushes) what it fully received from the dead connection: that is not read again.
  const control = r.rx.control();
  control.setAuth(JSON.parse(readFileSync(join(r.home, 'credentials', 'mig.json'), 'utf8')));
  let heldAtKill = 0;
  for (let i = 0; i < 50; i++) {
    const { held } = await control.request<{ held: { ranges: { length: number }[] }[] }>('GET', `/v1/cycles/${during.live!.cycleId}/held`);
    const n = held.reduce((a, h) => a + h.ranges.reduce((m, x) => m + x.length, 0), 0);
    if (n > 0 && n === heldAtKill) break;
    heldAtKill = n;
    await sleep(200);
  }
  assert.ok(heldAtKill >= 2 * MiB && heldAtKill < total, `the receiver holds ${heldAtKill} of ${total} B of the cycle`);

  serve = await r.serve();
  let v = await waitFor(r, 'mig', (x) => x.job.state === 'waiting' || x.job.state === 'error', 'the resumed cycle');
  assert.equal(v.job.state, 'waiting', JSON.stringify(v.job.error));
  assert.equal(v.cycles.length, 1, 'the interrupted cycle was resumed, not started anew');
  const c1 = v.cycles[0]!;
  // What the receiver held at the kill is not read again (it may hold more by the time the restart asks).
  assert.ok(c1.sourceBytesRead <= total - heldAtKill, `after the restart only what the receiver lacked was read (${c1.sourceBytesRead} of ${total}, ${heldAtKill} held)`);
  for (const [i, d] of vm.disks.entries()) assert.equal(await imageSha(r.rx, v.job.sourceId, c1.imageId!, i, d.capacity), expected[i]);
  assert.equal((await r.vc.snapshots(vm.moref)).snapshots.length, 0);
  serve.kill('SIGTERM');
  await killed(serve);

  // Crash between the receiver's commit and the connector's own record of it.
  await guestWrites(r.lab, vm.name, vm.disks[0]!.key, vm.disks[0]!.capacity, 10);
  const expected2 = await Promise.all(vm.disks.map((d) => liveSha(r.lab, vm.name, d.key, d.capacity)));
  serve = await r.serve({ VMLIFT_TEST_CRASH_AT: 'engine:after-receiver-commit' });
  await r.api(['job', 'sync', 'mig']);
  await killed(serve);
  assert.equal(serve.signalCode, 'SIGKILL');
  assert.equal((await r.rx.rx.store.listImages(v.job.sourceId)).length, 2, 'the receiver committed image 2');
  serve = await r.serve();
  v = await waitFor(r, 'mig', (x) => x.job.state === 'waiting' && x.cycles.length === 2 && x.cycles[0]!.state === 'committed', 'recovery');
  assert.equal((await r.rx.rx.store.listImages(v.job.sourceId)).length, 2, 'no image was made twice');
  for (const [i, d] of vm.disks.entries()) assert.equal(await imageSha(r.rx, v.job.sourceId, v.cycles[0]!.imageId!, i, d.capacity), expected2[i]);
  assert.equal((await r.vc.snapshots(vm.moref)).snapshots.length, 0, 'the crashed cycle\'s snapshot was swept');

  // The recorded changeIds are the committed image's: the next incremental is exact.
  await guestWrites(r.lab, vm.name, vm.disks[1]!.key, vm.disks[1]!.capacity, 5);
  const expected3 = await Promise.all(vm.disks.map((d) => liveSha(r.lab, vm.name, d.key, d.capacity)));
  await r.api(['job', 'sync', 'mig']);
  v = await waitFor(r, 'mig', (x) => x.job.state === 'waiting' && x.cycles.length === 3 && x.cycles[0]!.state === 'committed', 'cycle 3');
  assert.equal(v.cycles[0]!.kind, 'incremental');
  for (const [i, d] of vm.disks.entries()) assert.equal(await imageSha(r.rx, v.job.sourceId, v.cycles[0]!.imageId!, i, d.capacity), expected3[i]);

  // Metrics are served.
  const port = JSON.parse(readFileSync(join(r.home, 'api.json'), 'utf8')).port;
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  assert.match(metrics, /vmlift_jobs\{state="waiting"\} 1/);
  // This process recorded the recovered cycle 2 and ran cycle 3.
  assert.match(metrics, /vmlift_cycles_total\{job="mig",kind="incremental",result="committed"\} 2/);
  // Templates and workgroups through the CLI.
  await r.api(['template', 'create', 'nightly', '--interval', '1d', '--compression', '3', '--max-images', '2']);
  const bad = await vmlift(['template', 'create', 'hourly', '--interval', '30m', '--home', r.home]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /sync interval must be from 1h to 7d/);
  assert.match(bad.stderr, /fix: /);
  const badJson = await vmlift(['template', 'create', 'hourly', '--interval', '30m', '--home', r.home, '--json']);
  assert.notEqual(badJson.code, 0);
  const report = (JSON.parse(badJson.stdout) as { error: { code: string; message: string; fix?: string } }).error;
  assert.match(report.message, /sync interval must be from 1h to 7d/);
  assert.ok(report.code && report.fix, `--json prints the error's code and fix: ${badJson.stdout}`);
  // A vSphere system VM (vCLS agent) is no migration candidate: refused with the reason and a fix.
  const vcls = await vmlift(['job', 'create', 'vcls', '--vm', 'vCLS-4c2b7e1d-9a3f-4d6e-8b5c-1f0a2e3d4c5b', '--home', r.home]);
  assert.notEqual(vcls.code, 0);
  assert.match(vcls.stderr, /vSphere Cluster Services \(vCLS\) agent VM.*no migration candidate/);
  assert.match(vcls.stderr, /fix: pick an application VM/);
  // A VM whose config the vmlift user may not read is refused at creation, naming the privilege (not "0 disks").
  await r.lab.denyProperty('shape-independent', 'config', 'System.Read');
  const denied = await vmlift(['job', 'create', 'denied', '--vm', 'shape-independent', '--home', r.home]);
  await r.lab.allowAll();
  assert.notEqual(denied.code, 0);
  assert.match(denied.stderr, /vCenter did not return [^;]*config\.hardware\.device[^;(]* \(NoPermission: privilege System\.Read\) of shape-independent/);
  assert.match(denied.stderr, /fix: grant the vmlift user System\.Read on shape-independent/);
  const created = await r.api<{ settings: { intervalSeconds: number; compression: number; maxImages: number } }>(
    ['job', 'create', 'other', '--vm', 'shape-snapshot', '--template', 'nightly', '--compression', '5', '--no-start']);
  assert.deepEqual([created.settings.intervalSeconds, created.settings.compression, created.settings.maxImages], [86400, 5, 2]);
  await r.api(['workgroup', 'create', 'wave-1']);
  const added = await r.api<{ ok: boolean }[]>(['workgroup', 'add', 'wave-1', 'mig', 'other']);
  assert.ok(added.every((m) => m.ok));
  const started = await r.api<{ jobId: string; ok: boolean }[]>(['workgroup', 'start', 'wave-1']);
  assert.deepEqual(started.map((m) => m.ok), [true, true]);
  // The VM with a user snapshot fails preflight: error state with the reason and the fix.
  const other = await waitFor(r, 'other', (x) => x.job.state === 'error', 'preflight refusal');
  assert.match(JSON.stringify(other.job.error), /"step":"preflight".*preflight failed: .*snapshot/);
  // `job show --json` carries the error's code and fix as the engine recorded them
  const shown = await r.api<{ job: { error: { step: string; code?: string; fix?: string } | null } }>(['job', 'show', 'other']);
  assert.equal(shown.job.error?.code, 'PREFLIGHT');
  assert.match(shown.job.error?.fix ?? '', /Snapshots → Delete All/);
  const paused = await vmlift(['workgroup', 'pause', 'wave-1', '--home', r.home, '--json']);
  assert.equal(paused.code, 0, paused.stderr);
  const synced = await vmlift(['workgroup', 'sync', 'wave-1', '--home', r.home, '--json']);
  assert.equal(synced.code, 1, 'a source that cannot sync makes the batch exit non-zero');
  const results = JSON.parse(synced.stdout) as { jobId: string; ok: boolean; reason?: string }[];
  assert.ok(results.every((m) => !m.ok && /paused/.test(m.reason ?? '')), JSON.stringify(results));
  const wg = await r.api<{ members: { jobId: string; state: string; error: string | null }[] }>(['workgroup', 'show', 'wave-1']);
  assert.deepEqual(wg.members.map((m) => m.state), ['paused', 'paused']);

  serve.kill('SIGTERM');
  await killed(serve);
});

