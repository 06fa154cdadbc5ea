/**
 * The connector's own NBD servers through `vmlift connector serve`: a job with --transport nbd reads
 * through the server command of the connector config (lab/nbd-view.sh behind an administrator's
 * wrapper, so the server outlives a kill -9 of the connector), `job show` names each disk's
 * transport and why, no secret is on any argv, and after a kill -9 the restarted connector kills the
 * leftover servers and resumes the cycle to a correct image.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startLab } from '../../lab/lab.ts';
import { startTestReceiver } from '../transfer/helpers.ts';
import { VCenter } from '../../src/vsphere/index.ts';
import { PROJECT_ROOT } from '../../src/util/root.ts';
import { liveSha, imageSha, guestWrites, MiB } from './harness.ts';
import { vmlift } from '../vsphere/helpers.ts';
import { connectorProcess, initConnector } from './connector-process.ts';


function procs(): Map<number, { ppid: number; argv: string[] }> {
  const out = new Map<number, { ppid: number; argv: string[] }>();
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try {
      const st = readFileSync(`/proc/${n}/stat`, 'utf8');
      if (/\) Z /.test(st)) continue;
      out.set(Number(n), { ppid: Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]), argv: readFileSync(`/proc/${n}/cmdline`, 'utf8').split('\0').filter(Boolean) });
    } catch { /* gone */ }
  }
  return out;
}
function descendantsOf(pid: number): { pid: number; argv: string[] }[] {
  const all = procs();
  const out: { pid: number; argv: string[] }[] = [];
  const walk = (p: number) => { for (const [c, x] of all) if (x.ppid === p) { out.push({ pid: c, argv: x.argv }); walk(c); } };
  walk(pid);
  return out;
}
const alive = (pid: number) => procs().has(pid);

test('nbd through the connector\'s own server: job show names the transport, no secret on argv, kill -9 leaves no server behind after a restart, the cycle resumes to a correct image, a shutdown stops the servers', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-connbd-'));
  const lab = await startLab({ dir: join(dir, 'lab'), vms: 0, diskMb: 64 });
  const rx = await startTestReceiver();
  const vc = await VCenter.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } });
  const home = join(dir, 'home');
  const proc = connectorProcess(home, { VMLIFT_VDDK_LIBDIR: '' });
  t.after(async () => {
    proc.kill();
    await vc.close().catch(() => undefined);
    await rx.close();
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  // An administrator's wrapper: the server runs under a shell that does not die with the connector.
  const command = ['bash', '-c', 'bash "$0" "$@" & wait', join(PROJECT_ROOT, 'lab/nbd-view.sh'), lab.dir, '{socket}', '{vm}', '{snapshot}', '{diskKey}'];
  const { codeFile } = await initConnector(dir, lab, rx, ['--nbd-command', JSON.stringify(command)]);
  assert.deepEqual(JSON.parse(readFileSync(join(home, 'config.json'), 'utf8')).nbd, { command });
  const badInit = await vmlift(['connector', 'init', '--home', join(dir, 'h2'), '--server', lab.url, '--user', lab.user, '--password-file', lab.passwordFile,
    '--receiver', '127.0.0.1:1', '--fingerprint', 'x', '--code-file', codeFile, '--nbd-command', '["nbdkit","{sockett}"]']);
  assert.notEqual(badInit.code, 0);
  assert.match(badInit.stderr, /unknown placeholder \{sockett\}/);
  const vddkInit = await vmlift(['connector', 'init', '--home', join(dir, 'h3'), '--server', lab.url, '--user', lab.user, '--password-file', lab.passwordFile,
    '--receiver', '127.0.0.1:1', '--fingerprint', 'x', '--code-file', codeFile, '--vddk-libdir', 'vddk-dir', '--vddk-transports', 'hotadd:nbdssl:nbd', '--json']);
  assert.equal(vddkInit.code, 0, vddkInit.stderr);
  const c3 = JSON.parse(readFileSync(join(dir, 'h3', 'config.json'), 'utf8'));
  assert.deepEqual([c3.vddkLibdir, c3.vddkTransports], [join(process.cwd(), 'vddk-dir'), 'hotadd:nbdssl:nbd']);

  const { serve, api } = proc;
  interface Shown { job: { state: string; sourceId: string; error: unknown }; disks: { diskKey: number; transport: string | null; transportReason: string | null }[];
    cycles: { state: string; imageId: string | null }[]; live: { disks: { done: number; transport?: string; transportReason?: string }[] } | null }
  const waitFor = (pred: (v: Shown) => boolean, what: string) => proc.waitForJob<Shown>('mig', pred, what);

  const vm = lab.vm('two-disks');
  for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 200);
  const expected = await Promise.all(vm.disks.map((d) => liveSha(lab, vm.name, d.key, d.capacity)));
  let connector = await serve();
  // 32 Mbps keeps the first cycle's ~24 MiB on the wire for several seconds.
  await api(['job', 'create', 'mig', '--vm', 'two-disks', '--transport', 'nbd', '--compression', '0', '--bandwidth', '32']);
  const during = await waitFor((v) => (v.live?.disks ?? []).filter((d) => d.transport === 'nbd').length === 2 && v.live!.disks.some((d) => d.done > 2 * MiB), 'reading through nbd');
  assert.ok(during.live!.disks.every((d) => /^the job's transport is nbd \(the configured NBD server command \(bash\)\)$/.test(d.transportReason ?? '')), JSON.stringify(during.live));
  const text = await vmlift(['job', 'show', 'mig', '--home', home]);
  assert.match(text.stdout, /TRANSPORT/);
  assert.match(text.stdout, /disk 2000: nbd \(the job's transport is nbd/);

  const servers = descendantsOf(connector.pid!).filter((p) => p.argv[0] === 'nbdkit' && p.argv.includes('--unix'));
  assert.equal(servers.length, 2, 'one NBD server per disk');
  const nbdDir = join(home, 'nbd');
  assert.ok(servers.every((s) => s.argv[s.argv.indexOf('--unix') + 1]!.startsWith(`${nbdDir}/mig-`)), 'on sockets in <home>/nbd');
  for (const p of [{ pid: connector.pid!, argv: procs().get(connector.pid!)!.argv }, ...descendantsOf(connector.pid!)]) {
    assert.ok(!p.argv.join(' ').includes(lab.password), `no password on the argv of ${p.pid}: ${p.argv.join(' ')}`);
  }
  const wrappers = descendantsOf(connector.pid!).filter((p) => p.argv[0] === 'bash' && p.argv[1] === '-c').map((p) => p.pid);
  assert.equal(wrappers.length, 2);

  connector.kill('SIGKILL');
  await new Promise((r) => connector.once('exit', r));
  await sleep(300);
  assert.ok(wrappers.every(alive) && servers.every((s) => alive(s.pid)), 'the servers outlive the kill -9');

  connector = await serve();
  for (let i = 0; i < 100 && [...wrappers, ...servers.map((s) => s.pid)].some(alive); i++) await sleep(50);
  assert.ok(![...wrappers, ...servers.map((s) => s.pid)].some(alive), 'the restarted connector killed the servers the dead one left');
  const v = await waitFor((x) => x.job.state === 'waiting' || x.job.state === 'error', 'the resumed cycle');
  assert.equal(v.job.state, 'waiting', JSON.stringify(v.job.error));
  assert.equal(v.cycles.length, 1, 'the interrupted cycle was resumed');
  for (const [i, d] of vm.disks.entries()) assert.equal(await imageSha(rx, v.job.sourceId, v.cycles[0]!.imageId!, i, d.capacity), expected[i]);
  assert.deepEqual(v.disks.map((d) => d.transport), ['nbd', 'nbd'], '`job show --json` keeps each disk\'s transport');
  assert.equal((await vc.snapshots(vm.moref)).snapshots.length, 0);

  // A shutdown (SIGTERM) in the middle of a read stops the servers too.
  await api(['job', 'set', 'mig', '--bandwidth', '4']);
  for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 60);
  await api(['job', 'sync', 'mig']);
  await waitFor((x) => (x.live?.disks ?? []).filter((d) => d.transport === 'nbd').length === 2, 'the incremental reading through nbd');
  for (let i = 0; i < 100 && descendantsOf(connector.pid!).filter((p) => p.argv[0] === 'nbdkit').length < 2; i++) await sleep(50);
  assert.equal(descendantsOf(connector.pid!).filter((p) => p.argv[0] === 'nbdkit').length, 2, 'two servers run during the incremental');
  connector.kill('SIGTERM');
  await new Promise((r) => connector.once('exit', r));
  assert.deepEqual(readdirSync(nbdDir), [], 'no socket, pid or password file is left');
  assert.equal(procs().size > 0 && [...procs().values()].some((p) => p.argv[0] === 'nbdkit' && p.argv.some((a) => a.startsWith(nbdDir))), false, 'no NBD server is left');
});
