/**
 * `vmlift connector serve` reading through VDDK (the libvixDiskLib double in lab_map mode, chosen by
 * auto): a kill -9 of the connector in the middle of a VDDK read, then a restart, resumes the cycle
 * to a correct image and leaves nothing behind (no NBD server, nothing under <home>/nbd, no vmlift
 * snapshot, no VDDK connection or handle open); a refused VDDK login then ends a job in error with
 * VDDK_AUTH and its fix in `job show`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
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


function children(pid: number): { pid: number; argv: string[] }[] {
  const parent = new Map<number, number>();
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try { const st = readFileSync(`/proc/${n}/stat`, 'utf8'); if (!/\) Z /.test(st)) parent.set(Number(n), Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1])); } catch { /* gone */ }
  }
  const out: { pid: number; argv: string[] }[] = [];
  const walk = (p: number) => {
    for (const [c, pp] of parent) {
      if (pp !== p) continue;
      try { out.push({ pid: c, argv: readFileSync(`/proc/${c}/cmdline`, 'utf8').split('\0').filter(Boolean) }); } catch { /* gone */ }
      walk(c);
    }
  };
  walk(pid);
  return out;
}

test('vddk through connector serve: kill -9 during a VDDK read, a restart resumes the cycle to a correct image with nothing left behind; a refused VDDK login ends the job with VDDK_AUTH', async (t) => {
  execFileSync(join(PROJECT_ROOT, 'native/build.sh'));
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-convddk-'));
  const lab = await startLab({ dir: join(dir, 'lab'), vms: 0, diskMb: 64, vddkMap: true });
  const rx = await startTestReceiver();
  const vc = await VCenter.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } });
  const home = join(dir, 'home');
  const proc = connectorProcess(home, { VMLIFT_VDDK_LIBDIR: '', VMLIFT_VDDK_DOUBLE_STATS: '' });
  t.after(async () => {
    proc.kill();
    await vc.close().catch(() => undefined);
    await rx.close();
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const statsFile = join(dir, 'vddk-stats');
  const vddkConfig = join(dir, 'vddk.conf');
  writeFileSync(vddkConfig, `lab_map=${lab.vddkMapFile}\nstats_file=${statsFile}\n`, { mode: 0o600 });
  const stats = () => Object.fromEntries(readFileSync(statsFile, 'utf8').split(/\s+/).filter((l) => l.includes('=')).map((l) => { const [k, v] = l.split('='); return [k!, Number(v)]; }));
  await initConnector(dir, lab, rx, ['--vddk-libdir', join(PROJECT_ROOT, 'native/build/vddk-double'), '--vddk-config', vddkConfig]);

  const { serve, api } = proc;
  interface Shown { job: { state: string; sourceId: string; error: { code: string; message: string; fix?: string } | null }; disks: { transport: string | null }[];
    cycles: { state: string; imageId: string | null }[]; live: { disks: { done: number; transport?: string }[] } | null }
  const waitFor = (id: string, pred: (v: Shown) => boolean, what: string) => proc.waitForJob<Shown>(id, pred, what);

  const vm = lab.vm('two-disks');
  for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 200);
  const expected = await Promise.all(vm.disks.map((d) => liveSha(lab, vm.name, d.key, d.capacity)));
  let connector = await serve();
  // 32 Mbps keeps the first cycle's ~24 MiB on the wire for several seconds.
  await api(['job', 'create', 'mig', '--vm', 'two-disks', '--transport', 'auto', '--compression', '0', '--bandwidth', '32']); // starts at once
  await waitFor('mig', (v) => (v.live?.disks ?? []).filter((d) => d.transport === 'vddk').length === 2 && v.live!.disks.some((d) => d.done > 2 * MiB), 'reading through vddk');
  assert.ok(stats().handles! > 0 && stats().connections! > 0, `VDDK handles are open during the read (${JSON.stringify(stats())})`);
  assert.deepEqual(children(connector.pid!).filter((p) => p.argv[0] === 'nbdkit'), [], 'vddk runs no NBD server');
  // Guest writes after the snapshot must not reach the image.
  for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 20);

  connector.kill('SIGKILL');
  await new Promise((r) => connector.once('exit', r));
  connector = await serve();
  const v = await waitFor('mig', (x) => x.job.state === 'waiting' || x.job.state === 'error', 'the resumed cycle');
  assert.equal(v.job.state, 'waiting', JSON.stringify(v.job.error));
  assert.equal(v.cycles.length, 1, 'the interrupted cycle was resumed');
  for (const [i, d] of vm.disks.entries()) assert.equal(await imageSha(rx, v.job.sourceId, v.cycles[0]!.imageId!, i, d.capacity), expected[i], `disk ${d.key} is the disk at the snapshot`);
  assert.deepEqual(v.disks.map((d) => d.transport), ['vddk', 'vddk']);
  assert.deepEqual((await vc.snapshots(vm.moref)).snapshots, [], 'no vmlift snapshot left');
  const s = stats();
  assert.equal(s.connections, 0, `the restarted connector holds no VDDK connection (${JSON.stringify(s)})`);
  assert.equal(s.handles, 0);
  assert.ok(s.opens! >= 2, 'the restarted connector opened the disks again');
  assert.ok(!existsSync(join(home, 'nbd')) || readdirSync(join(home, 'nbd')).length === 0, 'nothing under <home>/nbd');
  assert.deepEqual(children(connector.pid!).filter((p) => p.argv[0] === 'nbdkit'), [], 'no NBD server');

  // A refused VDDK login (the double's auth_fail switch, read at InitEx of the next connector).
  connector.kill('SIGTERM');
  await new Promise((r) => connector.once('exit', r));
  assert.equal(stats().connections, 0, 'Exit at shutdown: no connection open');
  writeFileSync(vddkConfig, `lab_map=${lab.vddkMapFile}\nstats_file=${statsFile}\nauth_fail=100\n`, { mode: 0o600 });
  connector = await serve();
  const vs = lab.vm('shape-vsan');
  await api(['job', 'create', 'bad', '--vm', vs.name, '--transport', 'vddk']);
  const bad = await waitFor('bad', (x) => x.job.state === 'error', 'the refused login');
  assert.equal(bad.job.error?.code, 'VDDK_AUTH');
  assert.match(bad.job.error!.message, /refused the credentials or the certificate thumbprint/);
  const text = await vmlift(['job', 'show', 'bad', '--home', home]);
  assert.match(text.stdout + text.stderr, /VixDiskLib_ConnectEx .*refused the credentials/);
  assert.match(text.stdout + text.stderr, /check the vCenter user and password/);
  await sleep(1000);
  assert.equal((await api<Shown>(['job', 'show', 'bad'])).job.state, 'error', 'the connector does not retry it forever');
  assert.deepEqual((await vc.snapshots(vs.moref)).snapshots, []);
  connector.kill('SIGTERM');
  await new Promise((r) => connector.once('exit', r));
  const e = stats();
  assert.equal(e.connections, 0, `nothing leaked (${JSON.stringify(e)})`);
  assert.equal(e.handles, 0);
});
