/**
 * Issue 10's acceptance through the libvixDiskLib double in lab_map mode: a cycle whose snapshot
 * backing is a delta (a backup product's snapshot taken between cycles) and a vSAN disk complete with
 * vddk and auto over full, incremental and final cycles, bit-identical to each snapshot; the double's
 * own NFC fault switch lowers the host's disk limit and the job completes; its auth fault ends the job
 * with one clear error and leaves no connection or handle open.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { startRig, settings, liveSha, imageSha, guestWrites, MiB, type EngineRig } from './harness.ts';
import { transportDiskOpener } from '../../src/cli/wiring.ts';
import type { Transport } from '../../src/state/types.ts';
import { shutdownVddk } from '../../src/source/vddk/index.ts';
import { silentLogger } from '../../src/util/log.ts';
import { PROJECT_ROOT } from '../../src/util/root.ts';

/** A rig whose disks open through VDDK (the double, lab_map mode) with `extra` lines in its config file. */
async function vddkRig(extra = '', nfc?: { backoffMs: number; maxBackoffMs: number; recoveryMs: number }): Promise<{ rig: EngineRig; stats: () => Record<string, number> }> {
  execFileSync(path.join(PROJECT_ROOT, 'native/build.sh'));
  let statsFile = '';
  const rig = await startRig({
    vddkMap: true, nfc, retry: { attempts: 3, baseDelayMs: 20, maxDelayMs: 50 },
    opener: ({ vc, port, lab, dir }) => {
      statsFile = path.join(dir, 'vddk-stats');
      const vddkConfigFile = path.join(dir, 'vddk.conf');
      writeFileSync(vddkConfigFile, `lab_map=${lab.vddkMapFile}\nstats_file=${statsFile}\n${extra}`, { mode: 0o600 });
      const o = transportDiskOpener(vc, port, { user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } }, {
        vddkLibdir: path.join(PROJECT_ROOT, 'native/build/vddk-double'), vddkConfigFile, nbdDir: path.join(dir, 'nbd'),
      }, 2 * MiB, silentLogger);
      return { open: (...a) => o.open(...a), close: async () => { await o.close(); shutdownVddk(); } };
    },
  });
  const stats = () => Object.fromEntries(readFileSync(statsFile, 'utf8').split(/\s+/).filter((l) => l.includes('='))
    .map((l) => { const [k, v] = l.split('='); return [k!, Number(v)]; }));
  return { rig, stats };
}

/**
 * Runs a job over `vmName` through full, incremental and final cycles with guest writes before and
 * during each; `between` runs after the full cycle (e.g. a backup product's snapshot). Each cycle's
 * image must be the disk as the cycle's snapshot holds it.
 */
async function threeCycles(rig: EngineRig, id: string, vmName: string, transport: Transport, between?: () => Promise<void>): Promise<string[]> {
  const { lab, engine, rx } = rig;
  const vm = lab.vm(vmName);
  const paths: string[] = [];
  for (const kind of ['full', 'incremental', 'final'] as const) {
    for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, kind === 'full' ? 20 : 10);
    const expected = await Promise.all(vm.disks.map((d) => liveSha(lab, vm.name, d.key, d.capacity)));
    rig.hooks.afterSnapshot = async () => {
      // The disk paths VDDK is given at the cycle's snapshot, as the lab's VDDK map names them.
      const snap = (await lab.snapshots(vm.name)).at(-1)!.ref;
      for (const l of readFileSync(lab.vddkMapFile, 'utf8').split('\n')) {
        const f = l.split('\t');
        if (f[0] === 'disk' && f[1] === vm.moref && f[2] === snap) paths.push(`${kind} ${f[3]}`);
      }
      for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 8);
    };
    if (kind === 'full') { engine.createJob({ id, vmRef: vm.moref, settings: settings({ transport }) }); engine.start(id); }
    else if (kind === 'incremental') engine.requestSync(id);
    else engine.complete(id);
    await engine.runNow(id);
    rig.hooks.afterSnapshot = undefined;
    const job = engine.getJob(id);
    assert.equal(job.state, kind === 'final' ? 'completed' : 'waiting', `${id} ${kind}: ${JSON.stringify(job.error)}`);
    const [c] = rig.state.listCycles(id);
    assert.equal(c!.kind, kind);
    for (const [i, d] of vm.disks.entries()) {
      assert.equal(await imageSha(rx, job.sourceId, c!.imageId!, i, d.capacity), expected[i], `${id}: disk ${d.key} of the ${kind} cycle is the disk at its snapshot`);
    }
    if (kind === 'full') await between?.();
  }
  assert.deepEqual(rig.state.getDisks(id).map((d) => d.transport), vm.disks.map(() => 'vddk'), `${id}: every disk read through vddk`);
  return paths;
}

test('vddk and auto read a delta at the cycle snapshot (a backup product holds a snapshot) and vSAN disks: full, incremental and final cycles complete bit-identical to each snapshot', async (t) => {
  const { rig, stats } = await vddkRig();
  t.after(() => rig.close());
  const { lab, vc } = rig;
  for (const transport of ['vddk', 'auto'] as const) {
    const vm = lab.vm('two-disks');
    let foreign: { ref: string } | undefined;
    const paths = await threeCycles(rig, `delta-${transport}`, 'two-disks', transport, async () => {
      foreign = await vc.createSnapshot(vm.moref, 'VEEAM BACKUP TEMPORARY SNAPSHOT', { quiesce: false });
    });
    assert.deepEqual(paths, ['full [LocalDS_0] two-disks/two-disks.vmdk', 'full [LocalDS_0] two-disks/two-disks_1.vmdk',
      'incremental [LocalDS_0] two-disks/two-disks-000001.vmdk', 'incremental [LocalDS_0] two-disks/two-disks_1-000001.vmdk',
      'final [LocalDS_0] two-disks/two-disks-000001.vmdk', 'final [LocalDS_0] two-disks/two-disks_1-000001.vmdk'],
      'the incremental and final cycles read delta disks (their snapshots are second in the chain)');
    // The incremental and final cycles' snapshots were second in the chain: their disks were deltas.
    const snaps = await lab.snapshots(vm.name);
    assert.deepEqual(snaps.map((s) => s.name), ['VEEAM BACKUP TEMPORARY SNAPSHOT'], 'only the foreign snapshot is left');
    await vc.removeSnapshot(vm.moref, foreign!.ref);

    const vsanPaths = await threeCycles(rig, `vsan-${transport}`, 'shape-vsan', transport);
    assert.equal(vsanPaths.length, 6);
    assert.ok(vsanPaths.every((p) => p.includes('[vsanDatastore] shape-vsan/')), vsanPaths.join(', '));
    assert.equal((await vc.snapshots(lab.vm('shape-vsan').moref)).snapshots.length, 0);
  }
  const s = stats();
  assert.equal(s.connections, 0, `no VDDK connection left open (${JSON.stringify(s)})`);
  assert.equal(s.handles, 0, 'no VDDK disk handle left open');
  assert.ok(s.opens! >= 24, `every disk of every cycle was opened through VDDK (${s.opens})`);
});

test('the double\'s NFC fault switch (nfc_alloc_fail): the host\'s disk limit is lowered, the connector backs off and the job completes with correct images', async (t) => {
  const { rig, stats } = await vddkRig('nfc_alloc_fail=3\n', { backoffMs: 50, maxBackoffMs: 200, recoveryMs: 600_000 });
  t.after(() => rig.close());
  await threeCycles(rig, 'nfc', 'two-disks', 'vddk');
  const s = stats();
  assert.equal(s.nfc_errors, 3, `the double failed three reads as NFC's "failed to allocate" (${JSON.stringify(s)})`);
  assert.equal(rig.engine.getJob('nfc').error, null, 'the job did not fail, nor record an error');
  assert.ok(rig.state.listCycles('nfc').every((c) => c.state === 'committed'));
  const host = await rig.port.hostOf(rig.lab.vm('two-disks').moref);
  assert.ok(rig.limiter.hostLimits()[host]! < 8, `the host's disk limit was lowered (${JSON.stringify(rig.limiter.hostLimits())})`);
  assert.equal(s.connections, 0);
  assert.equal(s.handles, 0);
});

test('a refused VDDK login (the double\'s auth_fail switch) ends the job with one VDDK_AUTH error and its fix, not retried, nothing left open', async (t) => {
  const { rig, stats } = await vddkRig('auth_fail=100\n');
  t.after(() => rig.close());
  const { lab, engine, vc } = rig;
  const vm = lab.vm('two-disks');
  for (const transport of ['vddk', 'auto'] as const) {
    const id = `auth-${transport}`;
    engine.createJob({ id, vmRef: vm.moref, settings: settings({ transport }) });
    engine.start(id);
    await engine.runNow(id);
    const job = engine.getJob(id);
    assert.equal(job.state, 'error', JSON.stringify(job));
    assert.equal(job.error?.code, 'VDDK_AUTH');
    assert.equal(job.error?.step, 'transfer');
    assert.equal(job.error?.attempts, 1, 'a refused login is not retried');
    assert.match(job.error!.message, /VixDiskLib_ConnectEx .*refused the credentials or the certificate thumbprint/);
    assert.match(job.error!.fix ?? '', /user and password .*thumbprint/);
    assert.equal((await vc.snapshots(vm.moref)).snapshots.length, 0, 'no vmlift snapshot left');
    // The error stays: the scheduler does not keep trying the job.
    assert.ok(!engine.dueJobs().some((j) => j.id === id), 'a job in error is not due');
    assert.equal(rig.state.listCycles(id).length, 1);
    await engine.delete(id);
  }
  const s = stats();
  assert.equal(s.connections, 0, `no VDDK connection left open (${JSON.stringify(s)})`);
  assert.equal(s.handles, 0);
  assert.equal(s.opens, 0, 'no disk was opened');
});
