/**
 * `vmlift connector serve --agent-port` with a real `vmlift agent serve` configured by its agent.json:
 * the agent dials out through an authenticating HTTP CONNECT proxy to the connector and to the
 * receiver, a job created with `job create --agent` syncs its device bit for bit, `connector agents`
 * lists it with its device, a kill -9 of the connector during an incremental is resumed under the same
 * cycle id after the restart, and `agent check` passes through the proxy and fails, with its fix, on a
 * closed port. An invalid agent.json is refused naming the field and the fix. The token never shows
 * in the agent's output or the connector's logs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startLab } from '../../lab/lab.ts';
import { startTestReceiver, freePort } from '../transfer/helpers.ts';
import { imageSha } from './harness.ts';
import { vmlift } from '../vsphere/helpers.ts';
import { VMLIFT } from '../agent/harness.ts';
import { connectorProcess, initConnector } from './connector-process.ts';
import { startConnectProxy } from '../agent/connect-proxy.ts';
import { findSecrets, logFiles, startPoller } from '../cli/secret-scan-lib.ts';

const MiB = 1 << 20;

test('connector serve --agent-port with agent serve from agent.json through a proxy: job create --agent syncs bit for bit; agent check; config errors', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-connector-agent-'));
  const lab = await startLab({ dir: join(dir, 'lab'), vms: 0, diskMb: 16 });
  const rx = await startTestReceiver();
  const proxy = await startConnectProxy({ user: 'mig', password: 'proxy-secret' });
  const home = join(dir, 'home');
  const proc = connectorProcess(home);
  const children: ReturnType<typeof spawn>[] = [];
  t.after(async () => {
    for (const c of children) c.kill('SIGKILL');
    proc.kill();
    proxy.close();
    await rx.close();
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  await initConnector(dir, lab, rx, ['--data-port', String(rx.rx.dataPort)]);

  const tokenFile = join(dir, 'agent.token');
  const add = await vmlift(['connector', 'add-agent', 'db01', '--token-out', tokenFile, '--home', home, '--json']);
  assert.equal(add.code, 0, add.stderr);
  const { connectorFingerprint } = JSON.parse(add.stdout) as { connectorFingerprint: string };
  const token = readFileSync(tokenFile, 'utf8').trim();
  assert.ok(token.length >= 40);

  const agentPort = await freePort();
  const serveArgs = ['--agent-port', String(agentPort), '--agent-listen', '127.0.0.1'];
  await proc.serve({}, serveArgs);
  assert.equal((JSON.parse(readFileSync(join(home, 'api.json'), 'utf8')) as { agentPort: number }).agentPort, agentPort);

  const device = join(dir, 'db01.img');
  writeFileSync(device, Buffer.concat([randomBytes(6 * MiB), Buffer.alloc(4 * MiB), randomBytes(6 * MiB)]));
  const passwordFile = join(dir, 'proxy-password');
  writeFileSync(passwordFile, 'proxy-secret\n');
  const config = join(dir, 'agent.json');
  writeFileSync(config, JSON.stringify({
    connector: { url: `https://127.0.0.1:${agentPort}`, fingerprint: connectorFingerprint, tokenFile },
    proxy: { ip: '127.0.0.1', port: proxy.port, user: 'mig', passwordFile },
    devices: [device], agentId: 'db01', stateDir: join(dir, 'agent-state'),
  }));

  // An invalid file: the field and the fix.
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, JSON.stringify({ connector: { url: 'http://x:8091' }, proxy: { ip: '127.0.0.1', port: 'abc' } }));
  const refused = await vmlift(['agent', 'serve', '--config', bad]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /bad\.json: "connector\.url" must be an https:\/\/ URL/);
  assert.match(refused.stderr, /fix: set "connector\.url" to "https:\/\/CONNECTOR:8091"/);
  writeFileSync(bad, JSON.stringify({ devices: ['/dev/sda'], proxy: { ip: '127.0.0.1', port: 'abc' } }));
  const refused2 = await vmlift(['agent', 'check', '--config', bad]);
  assert.equal(refused2.code, 1);
  assert.match(refused2.stderr, /"proxy\.port" must be a port number 1\.\.65535, got "abc"/);
  assert.match(refused2.stderr, /fix: set "proxy\.port" to a number, e\.g\. 3128/);

  const poller = startPoller(); // argv and environ of every process below this test, the agent's included
  const agent = spawn(VMLIFT, ['agent', 'serve', '--config', config, '--log-level', 'info'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMLIFT_FROM_SOURCE: '1' } });
  children.push(agent);
  let agentOut = '';
  agent.stderr!.setEncoding('utf8').on('data', (d: string) => { agentOut += d; });
  agent.stdout!.setEncoding('utf8').on('data', (d: string) => { agentOut += d; });

  await proc.api(['job', 'create', 'db01', '--agent', 'db01', '--compression', '3']);
  await proc.api(['job', 'start', 'db01']);
  type View = { job: { state: string; error: unknown }; cycles: { kind: string; state: string; imageId: string | null }[] };
  const v = await proc.waitForJob<View>('db01', (x) => x.job.state === 'waiting' || x.job.state === 'error', 'the agent job\'s first cycle');
  assert.equal(v.job.state, 'waiting', `${JSON.stringify(v.job.error)}\n${agentOut.slice(-3000)}`);
  const sha = createHash('sha256').update(readFileSync(device)).digest('hex');
  assert.equal(await imageSha(rx, 'db01', v.cycles[0]!.imageId!, 0, 16 * MiB), sha, 'the image is the device, bit for bit');
  for (const port of [agentPort, rx.rx.controlPort, rx.rx.dataPort]) {
    assert.ok(proxy.targets.includes(`127.0.0.1:${port}`), `the agent reached 127.0.0.1:${port} through the proxy (${proxy.targets.join(' ')})`);
  }
  const agents = await proc.api<{ id: string; online: boolean; devices: { path: string; size: number }[]; jobs: string[] }[]>(['connector', 'agents']);
  const db = agents.find((a) => a.id === 'db01')!;
  assert.equal(db.online, true);
  assert.deepEqual(db.jobs, ['db01']);
  assert.ok(db.devices.some((d) => d.path === device && d.size === 16 * MiB));
  // The agent job counts in the connector's metrics like a VM's.
  const { port: apiPort } = JSON.parse(readFileSync(join(home, 'api.json'), 'utf8')) as { port: number };
  const metrics = await (await fetch(`http://127.0.0.1:${apiPort}/metrics`)).text();
  assert.match(metrics, /vmlift_cycles_total\{job="db01",kind="full",result="committed"\} 1/);
  assert.match(metrics, /vmlift_wire_bytes_total\{job="db01"\} [1-9]/);
  assert.match(metrics, /vmlift_source_bytes_read_total\{job="db01"\} [1-9]/);
  const show = await vmlift(['job', 'show', 'db01', '--home', home]);
  assert.match(show.stdout, /^job db01 \(db01\) {2}agent db01 {2}state waiting/m);

  // kill -9 of the connector while the agent sends an incremental: the agent finishes or resumes its
  // cycle, the restarted connector resumes the same cycle id and records its image.
  await proc.api(['job', 'set', 'db01', '--bandwidth', '8']);
  const fd = await import('node:fs/promises').then((fs) => fs.open(device, 'r+'));
  await fd.write(randomBytes(6 * MiB), 0, 6 * MiB, 2 * MiB);
  await fd.close();
  await proc.api(['job', 'sync', 'db01']);
  type Live = View & { live: { cycleId: string; step: string } | null };
  const sending = await proc.waitForJob<Live>('db01', (x) => x.live?.step === 'transfer', 'the incremental sending');
  await new Promise((r) => setTimeout(r, 1500));
  proc.kill();
  await new Promise((r) => setTimeout(r, 500));
  await proc.serve({}, serveArgs);
  await proc.api(['job', 'set', 'db01', '--bandwidth', '0']);
  const after = await proc.waitForJob<View>('db01', (x) => x.cycles.filter((c) => c.state === 'committed').length === 2 && x.job.state === 'waiting', 'the incremental after a connector restart');
  const inc = after.cycles[0]!;
  assert.equal((inc as unknown as { id: string }).id, sending.live!.cycleId, 'the cycle cut by the restart is the one committed');
  assert.equal(inc.kind, 'incremental');
  assert.equal(await imageSha(rx, 'db01', inc.imageId!, 0, 16 * MiB), createHash('sha256').update(readFileSync(device)).digest('hex'), 'bit for bit after the restart');

  // agent check: through the proxy, to the receiver the flags name; then a closed data port.
  const rxFlags = ['--receiver', `127.0.0.1:${rx.rx.controlPort}`, '--fingerprint', rx.rx.fingerprint];
  const ok = await vmlift(['agent', 'check', '--config', config, ...rxFlags, '--data-port', String(rx.rx.dataPort), '--json']);
  const okView = JSON.parse(ok.stdout) as { ok: boolean; checks: { name: string; status: string; fix?: string }[] };
  assert.equal(ok.code, 0, ok.stdout);
  assert.equal(okView.ok, true);
  for (const n of ['root', `device ${device}`, 'state space', 'receiver control port', 'receiver data port', 'clock']) {
    assert.equal(okView.checks.find((c) => c.name === n)?.status, 'ok', `${n}: ${ok.stdout}`);
  }
  for (const n of ['virtio drivers', 'grub', 'selinux', 'cloud-init']) assert.ok(okView.checks.some((c) => c.name === n), `the ${n} hint is there`);
  const closed = await freePort();
  const fail = await vmlift(['agent', 'check', '--config', config, ...rxFlags, '--data-port', String(closed), '--json']);
  assert.equal(fail.code, 1);
  const failView = JSON.parse(fail.stdout) as typeof okView;
  const data = failView.checks.find((c) => c.name === 'receiver data port')!;
  assert.equal(data.status, 'fail');
  assert.match(data.fix!, new RegExp(`open TCP ${closed} from this server to the receiver and allow CONNECT to it on the proxy`));

  agent.kill('SIGTERM');
  await new Promise((r) => agent.once('exit', r));
  const procs = await poller.stop();
  assert.ok(procs.some((p) => p.where === 'cmdline' && p.text.includes('agent serve')), 'the agent serve process was scanned');
  const secrets: Record<string, string> = { 'agent token': token, 'proxy password': 'proxy-secret' };
  const sourcesDir = join(dir, 'agent-state', 'sources');
  for (const id of readdirSync(sourcesDir)) {
    secrets[`agent credential ${id}`] = (JSON.parse(readFileSync(join(sourcesDir, id, 'credential.json'), 'utf8')) as { credential: string }).credential;
  }
  assert.ok(Object.keys(secrets).length >= 3, 'the agent registered a source and kept its credential');
  const sources = [...procs.map((p) => ({ what: `${p.comm}[${p.pid}] ${p.where}`, text: p.text })), { what: 'agent output', text: agentOut },
    ...logFiles(home).map((f) => ({ what: f, text: readFileSync(f, 'utf8') }))];
  const hits = findSecrets(sources, secrets);
  assert.deepEqual(hits, [], hits.join('\n'));
  assert.ok(findSecrets([{ what: 'the token file', text: readFileSync(tokenFile, 'utf8') }], secrets).length > 0, 'the scan finds the token where it is kept');
});
