/**
 * Issue 12 §5: no secret leaks from any vmlift process or its children. The demo's flows run as real
 * processes — the lab vCenter, `vmlift receiver serve`, `vmlift connector serve` with a job read
 * through the NBD transport (nbdkit children started from the connector's server command, the
 * password handed over as a file) and one through VDDK (the libvixDiskLib double), `vmlift agent sync`,
 * `vmlift image export --format qcow2` (qemu-img), both senders through an authenticating HTTP
 * CONNECT proxy — while a poller reads /proc/<pid>/cmdline and /proc/<pid>/environ of every process
 * descending from this test. Afterwards every log file, every stdout and stderr, every --json output
 * and the error messages of calls that fail on purpose (wrong vCenter password, unknown activation
 * code, wrong proxy password, wrong API token) are searched for each secret, raw, in base64 (three
 * alignments, so one embedded in a longer base64 string is found too) and in hex. A self-check first
 * plants a secret in a child's argv, another in a child's environment and one in a log file, and
 * requires the scanner to find all three.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startLab } from '../../lab/lab.ts';
import { PROJECT_ROOT } from '../../src/util/root.ts';
import { guestWrites } from '../engine/harness.ts';
import { Receiver, VMLIFT, killChildren, runAgent, vmlift, writeCodeFile } from '../agent/harness.ts';
import { findSecrets, forms, logFiles, snapshotDescendants, startPoller, type Source } from './secret-scan-lib.ts';

/** An HTTP CONNECT proxy that wants Basic auth; counts the tunnels it opened. */
async function startProxy(user: string, password: string): Promise<{ port: number; tunnels: () => number; close(): void }> {
  const want = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
  let tunnels = 0;
  const socks = new Set<net.Socket>();
  const server = net.createServer((c) => {
    socks.add(c);
    c.on('close', () => socks.delete(c));
    c.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      c.off('data', onData);
      const head = buf.subarray(0, end).toString('latin1');
      const m = /^CONNECT (.+):(\d+) HTTP\/1\.[01]\r\n/.exec(head);
      const auth = /\r\nproxy-authorization: ([^\r]*)/i.exec(head)?.[1];
      if (!m || auth !== want) { c.end('HTTP/1.1 407 Proxy Authentication Required\r\n\r\n'); return; }
      tunnels++;
      const up = net.connect(Number(m[2]), m[1]!.replace(/^\[|\]$/g, ''), () => {
        c.write('HTTP/1.1 200 Connection established\r\n\r\n');
        const rest = buf.subarray(end + 4);
        if (rest.length) up.write(rest);
        c.pipe(up); up.pipe(c);
      });
      socks.add(up);
      up.on('close', () => { socks.delete(up); c.destroy(); });
      up.on('error', () => c.destroy());
      c.on('close', () => up.destroy());
    };
    c.on('data', onData);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as net.AddressInfo).port, tunnels: () => tunnels, close() { for (const s of socks) s.destroy(); server.close(); } };
}

test('scanner self-check: a secret planted in a child\'s argv, in a child\'s environment and in a log file is found', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-scan-self-'));
  const kids: ChildProcess[] = [];
  t.after(() => { for (const k of kids) k.kill('SIGKILL'); rmSync(dir, { recursive: true, force: true }); });
  const inArgv = `planted-argv-${randomBytes(8).toString('hex')}`;
  const inEnv = `planted-env-${randomBytes(8).toString('hex')}`;
  const inLog = `planted-log-${randomBytes(8).toString('hex')}`;
  // a grandchild (sh → sleep), so the walk over ppids is exercised, with the secret in base64
  kids.push(spawn('sh', ['-c', 'sleep 30 & wait', 'sh', Buffer.from(inArgv).toString('base64')], { stdio: 'ignore' }));
  kids.push(spawn('sh', ['-c', 'exec sleep 30'], { stdio: 'ignore', env: { PATH: process.env.PATH, SOME_TOKEN: inEnv } }));
  writeFileSync(join(dir, 'x.log'), `{"msg":"hello","key":"${Buffer.from(inLog).toString('hex')}"}\n`);
  await sleep(300);
  const procs = snapshotDescendants(process.pid);
  assert.ok(procs.some((p) => p.comm === 'sleep'), 'the scan sees grandchildren');
  const sources: Source[] = [...procs.map((p) => ({ what: `${p.comm}[${p.pid}] ${p.where}`, text: p.text })),
    ...logFiles(dir).map((f) => ({ what: f, text: readFileSync(f, 'utf8') }))];
  const hits = findSecrets(sources, { inArgv, inEnv, inLog, absent: `never-${randomBytes(8).toString('hex')}` });
  assert.ok(hits.some((h) => h.startsWith('inArgv') && / cmdline$/.test(h)), hits.join('\n'));
  assert.ok(hits.some((h) => h.startsWith('inEnv') && / environ$/.test(h)), hits.join('\n'));
  assert.ok(hits.some((h) => h.startsWith('inLog') && h.endsWith('x.log')), hits.join('\n'));
  assert.ok(!hits.some((h) => h.startsWith('absent')));
});

test('no secret in any argv, environment, log, stdout/stderr, --json output or error message of the demo\'s flows', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-scan-'));
  const poller = startPoller();
  let connector: ChildProcess | undefined;
  const outputs: Source[] = [];
  const cli = async (what: string, args: string[], env: NodeJS.ProcessEnv = {}) => {
    const r = await vmlift(args, env);
    outputs.push({ what: `${what} stdout`, text: r.stdout }, { what: `${what} stderr`, text: r.stderr });
    return r;
  };
  const lab = await startLab({ dir: join(dir, 'lab'), vms: 1, diskMb: 32, vddkMap: true });
  const proxyPassword = `proxy-pw-${randomBytes(12).toString('hex')}`;
  const proxy = await startProxy('scanuser', proxyPassword);
  t.after(async () => {
    await poller.stop();
    connector?.kill('SIGKILL');
    await killChildren();
    proxy.close();
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const secretFile = (name: string, value: string) => { const p = join(dir, name); writeFileSync(p, `${value}\n`, { mode: 0o600 }); return p; };
  const proxyPwFile = secretFile('proxy-password', proxyPassword);
  const wrongVcPassword = `wrong-vc-pw-${randomBytes(12).toString('hex')}`;
  const bogusCode = `VML-BOGUS-${randomBytes(6).toString('hex').toUpperCase()}`;
  const wrongProxyPassword = `wrong-proxy-${randomBytes(12).toString('hex')}`;

  const rx = await Receiver.start(join(dir, 'rx'));
  const made = await vmlift(['receiver', 'code', '--data-dir', rx.dataDir, '--quota', '2', '--json']);
  assert.equal(made.code, 0, made.stderr);
  const agentCode = (JSON.parse(made.stdout) as { code: string }).code;
  assert.notEqual(agentCode, rx.code);
  const connectorCodeFile = await writeCodeFile(join(dir, 'connector-code'), rx.code);
  const agentCodeFile = await writeCodeFile(join(dir, 'agent-code'), agentCode);

  // the connector: nbd through the lab's view served by a real nbdkit, the password file checked by the
  // wrapper (so the server command really gets {passwordFile}), vddk through the double
  const home = join(dir, 'home');
  const vddkConf = secretFile('vddk.conf', `lab_map=${lab.vddkMapFile}`);
  const nbdCommand = ['bash', '-c', 'test -s "$6" || { echo "no password file" >&2; exit 1; }; exec bash "$0" "$1" "$2" "$3" "$4" "$5"',
    join(PROJECT_ROOT, 'lab/nbd-view.sh'), lab.dir, '{socket}', '{vm}', '{snapshot}', '{diskKey}', '{passwordFile}'];
  const init = await cli('connector init', ['connector', 'init', '--home', home, '--server', lab.url, '--user', lab.user, '--password-file', lab.passwordFile,
    '--thumbprint', lab.thumbprint, '--receiver', rx.address, '--fingerprint', rx.fingerprint, '--code-file', connectorCodeFile,
    '--proxy', `http://scanuser@127.0.0.1:${proxy.port}`, '--proxy-password-file', proxyPwFile,
    '--vddk-libdir', join(PROJECT_ROOT, 'native/build/vddk-double'), '--vddk-config', vddkConf, '--nbd-command', JSON.stringify(nbdCommand), '--json']);
  assert.equal(init.code, 0, init.stderr);
  connector = spawn(VMLIFT, ['connector', 'serve', '--home', home, '--api-port', '0', '--tick-ms', '200'],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMLIFT_LOG_LEVEL: 'debug', VMLIFT_VDDK_LIBDIR: '' } });
  const connectorOut = { stdout: '', stderr: '' };
  connector.stdout!.on('data', (b) => { connectorOut.stdout += b; });
  connector.stderr!.on('data', (b) => { connectorOut.stderr += b; });
  for (let i = 0; i < 300 && !existsSync(join(home, 'api.json')); i++) {
    assert.equal(connector.exitCode, null, `connector exited: ${connectorOut.stderr}`);
    await sleep(100);
  }
  const { port } = JSON.parse(readFileSync(join(home, 'api.json'), 'utf8')) as { port: number };
  const token = readFileSync(join(home, 'api-token'), 'utf8').trim();
  // the API listens on loopback only: /proc/net/tcp{,6} has its port in LISTEN on 127.0.0.1 and nowhere else
  const listening = ['/proc/net/tcp', '/proc/net/tcp6'].flatMap((f) => readFileSync(f, 'utf8').split('\n').slice(1))
    .map((l) => l.trim().split(/\s+/)).filter((c) => c[1]?.endsWith(`:${port.toString(16).toUpperCase().padStart(4, '0')}`) && c[3] === '0A').map((c) => c[1]);
  assert.deepEqual(listening, [`0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`]);

  const vmNbd = lab.vm('two-disks');
  for (const d of vmNbd.disks) await guestWrites(lab, vmNbd.name, d.key, d.capacity, 40);
  const [c1, c2] = await Promise.all([
    cli('job create nbd', ['job', 'create', 'scan-nbd', '--vm', 'two-disks', '--transport', 'nbd', '--bandwidth', '16', '--home', home, '--json']),
    cli('job create vddk', ['job', 'create', 'scan-vddk', '--vm', 'vm-0001', '--transport', 'vddk', '--home', home, '--json']),
  ]);
  assert.equal(c1.code, 0, c1.stderr);
  assert.equal(c2.code, 0, c2.stderr);
  const started = await Promise.all(['scan-nbd', 'scan-vddk'].map((j) => cli(`job start ${j}`, ['job', 'start', j, '--home', home, '--json'])));
  for (const s of started) assert.equal(s.code, 0, s.stderr);

  // meanwhile: the agent through the proxy, and the calls that fail on purpose
  const device = join(dir, 'agent-disk.img');
  writeFileSync(device, Buffer.concat([randomBytes(2 << 20), Buffer.alloc(2 << 20)]));
  const agentArgs = { devices: [device], receiver: rx, codeFile: agentCodeFile };
  // an activation code on the command line is not accepted at all (it would show in /proc/<pid>/cmdline)
  const argvCode = `VML-ARGV-${randomBytes(6).toString('hex').toUpperCase()}`;
  const onArgv = cli('agent sync --code', ['agent', 'sync', '--device', device, '--receiver', rx.address, '--fingerprint', rx.fingerprint, '--code', argvCode,
    '--state-dir', join(dir, 'agent-argv'), '--source-id', 'scan-argv', '--once', '--json']);
  // and `vmlift demo` itself (its own lab, receiver, in-process connector, qcow2 exports)
  const demoDir = join(dir, 'demo');
  const demo = cli('demo', ['demo', '--dir', demoDir, '--disk-mib', '16', '--no-guest', '--json', '--verbose']);
  const [agent, badCode, badProxy, badVc] = await Promise.all([
    runAgent({ ...agentArgs, stateDir: join(dir, 'agent'), sourceId: 'scan-agent',
      extra: ['--proxy', `http://scanuser@127.0.0.1:${proxy.port}`, '--proxy-password-file', proxyPwFile, '--log-level', 'debug', '--checksum'] }),
    runAgent({ ...agentArgs, stateDir: join(dir, 'agent-bad'), sourceId: 'scan-bad', codeFile: secretFile('bogus-code', bogusCode), extra: ['--log-level', 'debug'] }),
    runAgent({ ...agentArgs, stateDir: join(dir, 'agent-bad-proxy'), sourceId: 'scan-bad-proxy',
      extra: ['--proxy', `http://scanuser@127.0.0.1:${proxy.port}`, '--proxy-password-file', secretFile('wrong-proxy', wrongProxyPassword), '--retry-for', '5s', '--log-level', 'debug'] }),
    cli('vc ls with a wrong password', ['vc', 'ls', '--server', lab.url, '--user', lab.user, '--password-file', secretFile('wrong-vc', wrongVcPassword), '--thumbprint', lab.thumbprint, '--json']),
  ]);
  for (const [name, r] of [['agent', agent], ['agent bad code', badCode], ['agent bad proxy', badProxy]] as const) {
    outputs.push({ what: `${name} stdout`, text: JSON.stringify(r.lines) }, { what: `${name} stderr`, text: r.stderr });
  }
  assert.equal(agent.exit, 0, agent.stderr);
  assert.ok(badCode.exit !== 0 && JSON.stringify(badCode.lines).includes('CODE_UNKNOWN'), JSON.stringify(badCode.lines) + badCode.stderr);
  assert.ok(badProxy.exit !== 0 && JSON.stringify(badProxy.lines).includes('PROXY_AUTH'), JSON.stringify(badProxy.lines) + badProxy.stderr);
  const demoRun = await demo;
  assert.equal(demoRun.code, 0, demoRun.stderr);
  assert.ok((JSON.parse(demoRun.stdout) as { exports: { matches: boolean }[] }).exports.every((e) => e.matches));
  const argvRun = await onArgv;
  assert.notEqual(argvRun.code, 0);
  assert.match(argvRun.stderr, /unknown option '--code'/);
  assert.ok(!`${argvRun.stdout}${argvRun.stderr}`.includes(argvCode));
  assert.ok(!existsSync(join(dir, 'agent-argv', 'credential.json')), 'nothing registered with a code from argv');
  assert.notEqual(badVc.code, 0);
  assert.match(badVc.stdout, /"error":\{"code":"VC_/);
  const wrongToken = await fetch(`http://127.0.0.1:${port}/v1/jobs`, { headers: { authorization: `Bearer ${token.replace(/.$/, token.endsWith('A') ? 'B' : 'A')}` } });
  assert.equal(wrongToken.status, 401);
  outputs.push({ what: 'API answer to a wrong token', text: await wrongToken.text() });

  interface JobView { job: { state: string; sourceId: string; error: unknown }; cycles: { imageId: string | null }[]; disks: { transport: string | null }[] }
  const show = async (id: string): Promise<JobView> =>
    (await (await fetch(`http://127.0.0.1:${port}/v1/jobs/${id}`, { headers: { authorization: `Bearer ${token}` } })).json()) as JobView;
  const views: Record<string, JobView> = {};
  for (const id of ['scan-nbd', 'scan-vddk']) {
    for (let i = 0; i < 800; i++) {
      views[id] = await show(id);
      if (['waiting', 'error'].includes(views[id]!.job.state)) break;
      await sleep(150);
    }
    assert.equal(views[id]!.job.state, 'waiting', JSON.stringify(views[id]!.job.error));
  }
  assert.deepEqual(views['scan-nbd']!.disks.map((d) => d.transport), ['nbd', 'nbd']);
  assert.deepEqual(views['scan-vddk']!.disks.map((d) => d.transport), ['vddk']);
  assert.ok(proxy.tunnels() >= 4, `the senders went through the proxy (${proxy.tunnels()} tunnels)`);

  const nbdImage = views['scan-nbd']!.cycles[0]!.imageId!;
  // qemu-img under a recording shim that keeps the argv and environment it was given, then runs the real one
  const shimDir = join(dir, 'shim');
  const capture = join(dir, 'qemu-img-capture');
  rmSync(shimDir, { recursive: true, force: true });
  const shim = join(shimDir, 'qemu-img');
  mkdirSync(shimDir);
  writeFileSync(shim, `#!/bin/sh\nprintf '%s\\0' "$0" "$@" >> '${capture}.argv'\nenv -0 >> '${capture}.env'\nexec /usr/bin/qemu-img "$@"\n`);
  chmodSync(shim, 0o755);
  const jsonCalls = await Promise.all([
    cli('job show nbd', ['job', 'show', 'scan-nbd', '--home', home, '--json']),
    cli('job show vddk', ['job', 'show', 'scan-vddk', '--home', home, '--json']),
    cli('job ls', ['job', 'ls', '--home', home, '--json']),
    cli('image ls', ['image', 'ls', '--data-dir', rx.dataDir, '--json']),
    cli('image export qcow2', ['image', 'export', '--data-dir', rx.dataDir, '--source', views['scan-nbd']!.job.sourceId, '--image', nbdImage,
      '--format', 'qcow2', '--output', join(dir, 'out.qcow2'), '--json'], { PATH: `${shimDir}:${process.env.PATH}` }),
  ]);
  for (const r of jsonCalls) assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(jsonCalls[4]!.stdout).format, 'qcow2');
  assert.ok(existsSync(`${capture}.argv`), 'qemu-img ran');
  const rotated = await cli('receiver rotate-cert', ['receiver', 'rotate-cert', '--data-dir', rx.dataDir, '--json']);
  assert.equal(rotated.code, 0, rotated.stderr);

  // the rotation seen by the connector: once the receiver serves the new certificate, a cycle stops
  // with FINGERPRINT_MISMATCH naming it and the command that accepts it; no image is made
  const newFp = (JSON.parse(rotated.stdout) as { fingerprint: string }).fingerprint;
  await rx.stop();
  await rx.spawn();
  const sync = await fetch(`http://127.0.0.1:${port}/v1/jobs/scan-vddk/sync`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
  assert.equal(sync.status, 200, await sync.text());
  let failed: JobView | undefined;
  for (let i = 0; i < 800 && failed?.job.state !== 'error'; i++) { failed = await show('scan-vddk'); if (failed.job.state !== 'error') await sleep(150); }
  const jobErr = failed!.job.error as { code: string; message: string; fix: string };
  assert.equal(jobErr.code, 'FINGERPRINT_MISMATCH', JSON.stringify(jobErr));
  assert.ok(jobErr.message.includes(`presented certificate fingerprint ${newFp}`), jobErr.message);
  assert.ok(jobErr.fix.includes(`\`vmlift connector set --home ${home} --fingerprint ${newFp}\`, then restart the connector`), jobErr.fix);
  assert.equal(failed!.cycles.filter((c) => c.imageId).length, 1, 'no image through the old pin');
  const shownErr = await cli('job show after the rotation', ['job', 'show', 'scan-vddk', '--home', home, '--json']);
  assert.equal(shownErr.code, 0, shownErr.stderr);
  assert.ok(shownErr.stdout.includes('FINGERPRINT_MISMATCH'));

  connector.kill('SIGTERM');
  await new Promise((r) => connector!.once('exit', r));
  await rx.stop();
  const procs = await poller.stop();

  // the secrets, credentials included (read now: they were issued during the run)
  const credentials: Record<string, string> = {};
  for (const f of readdirSync(join(home, 'credentials'))) credentials[`connector credential ${f}`] = (JSON.parse(readFileSync(join(home, 'credentials', f), 'utf8')) as { credential: string }).credential;
  credentials['agent credential'] = (JSON.parse(readFileSync(join(dir, 'agent', 'credential.json'), 'utf8')) as { credential: string }).credential;
  for (const f of readdirSync(join(demoDir, 'connector', 'credentials'))) credentials[`demo credential ${f}`] = (JSON.parse(readFileSync(join(demoDir, 'connector', 'credentials', f), 'utf8')) as { credential: string }).credential;
  assert.equal(Object.keys(credentials).length, 4, 'two connector sources, the agent and the demo\'s source registered');
  const demoCodes = readdirSync(join(demoDir, 'receiver', 'codes')).map((f) => (JSON.parse(readFileSync(join(demoDir, 'receiver', 'codes', f), 'utf8')) as { code: string }).code);
  assert.equal(demoCodes.length, 1);
  const secrets: Record<string, string> = {
    'vCenter password': lab.password, 'wrong vCenter password': wrongVcPassword, 'proxy password': proxyPassword, 'wrong proxy password': wrongProxyPassword,
    'demo vCenter password': readFileSync(join(demoDir, 'lab', 'password'), 'utf8').trim(), 'demo activation code': demoCodes[0]!,
    'connector activation code': rx.code, 'agent activation code': agentCode, 'unknown activation code': bogusCode, 'connector API token': token, ...credentials,
  };
  const codes = new Set([rx.code, agentCode]);
  const notCodes = Object.fromEntries(Object.entries(secrets).filter(([, v]) => !codes.has(v)));

  const qemuCapture = [`${capture}.argv`, `${capture}.env`].map((f) => ({ what: `qemu-img ${f.endsWith('env') ? 'environ' : 'argv'} (shim)`, text: readFileSync(f, 'latin1').replace(/\0/g, ' ') }));
  const procSources = [...procs.map((p) => ({ what: `${p.comm}[${p.pid}] ${p.where}`, text: p.text })), ...qemuCapture];
  const logs = logFiles(dir); // the connector's, the labs' (lab.log, each VM's vmware.log), any server's
  const logSources = logs.map((f) => ({ what: f, text: readFileSync(f, 'utf8') }));
  const streamSources = [...outputs, { what: 'receiver stderr', text: rx.stderr },
    { what: 'connector stdout', text: connectorOut.stdout }, { what: 'connector stderr', text: connectorOut.stderr }];
  // `receiver code` prints the code it makes (its purpose): scanned for every other secret
  const byDesign = [{ what: 'receiver code stdout', text: made.stdout }];
  // positive controls on this run's values: where the secrets are kept by design the scan finds them,
  // and a proxy's Basic header (the password inside a longer base64 string) would be caught
  const kept = [{ what: 'connector secrets/vcenter-password', text: readFileSync(join(home, 'secrets', 'vcenter-password'), 'utf8') },
    { what: 'connector secrets/proxy-password', text: readFileSync(join(home, 'secrets', 'proxy-password'), 'utf8') },
    { what: 'agent credential.json', text: readFileSync(join(dir, 'agent', 'credential.json'), 'utf8') },
    { what: 'a Basic header', text: `Proxy-Authorization: Basic ${Buffer.from(`scanuser:${proxyPassword}`).toString('base64')}` }];
  assert.deepEqual(findSecrets(kept, secrets).map((h) => h.split(' (as')[0]).sort(),
    ['agent credential', 'proxy password', 'proxy password', 'vCenter password']);

  const hits = [...findSecrets([...procSources, ...logSources, ...streamSources], secrets), ...findSecrets(byDesign, notCodes)];
  assert.deepEqual(hits, [], hits.join('\n'));

  // the scan covered what it claims: nbdkit, qemu-img, every vmlift role
  const comms = new Set(procs.map((p) => p.comm));
  const argvs = procs.filter((p) => p.where === 'cmdline').map((p) => p.text);
  assert.ok(comms.has('nbdkit'), `nbdkit was scanned (${[...comms].join(', ')})`);
  for (const role of ['receiver serve', 'connector serve', 'agent sync', 'image export', 'job show', 'vc ls', 'demo']) {
    assert.ok(argvs.some((a) => a.includes(role)), `a vmlift ${role} process was scanned`);
  }
  assert.ok(logs.some((f) => f.startsWith(join(home, 'logs'))), 'the connector\'s log file was scanned');
  assert.ok(logSources.every((s) => s.text.length > 0 || !statSync(s.what).size));
  const pids = new Set(procs.map((p) => p.pid));
  const bytes = [...procSources, ...logSources, ...streamSources].reduce((n, s) => n + s.text.length, 0);
  console.log(`secret scan: ${Object.keys(secrets).length} secrets x ${forms(lab.password).length} forms; ${pids.size} processes `
    + `(${[...comms].sort().join(', ')}), ${procSources.length} argv/environ texts, ${logs.length} log files, ${streamSources.length} outputs, ${bytes} bytes: no hit`);
});
