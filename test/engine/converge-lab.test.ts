/**
 * `job complete --max-final-sync` on the lab, through the CLI against the connector API over a rig:
 * with a change rate that halves every cycle the incrementals converge and the job completes (--yes);
 * with one that doubles every cycle the bound is refused with the measured rates and the job keeps
 * syncing. The bound is the lab's measured fixed part of a cycle plus 1.5 s, so that the test means
 * the same on a loaded machine as on a quiet one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRig, settings, MiB } from './harness.ts';
import { ChangeWriter, rigApi } from './final-sync-helpers.ts';
import { vmlift } from '../vsphere/helpers.ts';
import { forecastFinalSync } from '../../src/engine/final-sync-forecast.ts';
import { FinalSyncConvergence } from '../../src/engine/converge.ts';
import { UserError } from '../../src/util/errors.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ENV = { VMLIFT_CONVERGE_POLL_MS: '250' };

test('--max-final-sync converges on a shrinking change rate and refuses a growing one, naming the measured rates', async (t) => {
  const rig = await startRig({ vms: 2, diskMb: 256 });
  t.after(() => rig.close());
  const api = await rigApi(rig);
  t.after(() => api.close());
  const { lab, engine } = rig;
  const writers = new Map<string, ChangeWriter>();
  const factor = new Map<string, number>();
  t.after(async () => { for (const w of writers.values()) await w.stop(); });
  // Each snapshot of a converging job changes its writer's rate (the scripted change rate).
  rig.hooks.afterSnapshot = async (vmRef) => {
    const w = writers.get(vmRef); const k = factor.get(vmRef);
    if (w && k) w.rate = Math.min(8e6, w.rate * k);
  };

  assert.throws(() => new FinalSyncConvergence(engine).start('nope', { maxFinalSyncSeconds: 60 }), (e: unknown) => e instanceof UserError && e.code === 'NO_JOB');

  /** Full cycle and one incremental with the writer at `rate`; returns the bound: the fixed part + `margin` s. */
  const warmUp = async (id: string, vmName: string, rate: number, margin: number): Promise<number> => {
    const vm = lab.vm(vmName);
    engine.createJob({ id, vmRef: vm.moref, settings: settings({ bandwidthMbps: 40, compression: 0 }) });
    assert.throws(() => new FinalSyncConvergence(engine).start(id, { maxFinalSyncSeconds: 60 }),
      (e: unknown) => e instanceof UserError && e.code === 'CANNOT_CONVERGE' && /created/.test(e.message) && /vmlift job start/.test(e.fix ?? ''));
    engine.start(id);
    await engine.runNow(id);
    const w = new ChangeWriter(lab, vm.name, vm.disks[0]!.key, { rate, from: 16 * MiB, to: vm.disks[0]!.capacity });
    writers.set(vm.moref, w);
    w.start();
    await sleep(4000);
    engine.requestSync(id);
    await engine.runNow(id);
    assert.equal(engine.getJob(id).state, 'waiting', JSON.stringify(engine.getJob(id).error));
    const f = forecastFinalSync(rig.state.listCycles(id, 20), engine.getJob(id).settings);
    assert.ok(f.available, JSON.stringify(f));
    await sleep(4000); // changes pile up: the forecast is over the bound when the command starts
    return Math.ceil(f.forecast.fixedSeconds + margin);
  };

  // Shrinking: the rate halves at every snapshot.
  const bound = await warmUp('shrink', 'vm-0001', 3e6, 1.5);
  const shrinkVm = lab.vm('vm-0001').moref;
  // Without --yes the command asks; a closed stdin is no answer, and the job keeps syncing.
  const asked = await vmlift(['job', 'complete', 'shrink', '--max-final-sync', '1h', '--home', api.home], ENV);
  assert.equal(asked.code, 1, asked.stderr);
  assert.match(asked.stderr, /Stop the services on the source now/);
  assert.match(asked.stderr, /the final sync was not confirmed/);
  assert.match(asked.stderr, /fix: stop the services, then run the command again with --yes/);
  assert.equal(engine.getJob('shrink').state, 'waiting');

  factor.set(shrinkVm, 0.5);
  const before = rig.state.listCycles('shrink', 100).length;
  const done = await vmlift(['job', 'complete', 'shrink', '--max-final-sync', `${bound}s`, '--yes', '--home', api.home], ENV);
  await writers.get(shrinkVm)!.stop(); // the services stop
  assert.equal(done.code, 0, done.stderr);
  assert.match(done.stdout, /job shrink: completing \(final sync forecast ~/);
  const ran = rig.state.listCycles('shrink', 100).length - before;
  const forecasts = [...done.stderr.matchAll(/after cycle \S+: final sync forecast ~([\d.]+) s/g)].map((m) => Number(m[1]));
  console.log(`converge figures (shrinking): bound ${bound} s, ${ran} cycles, forecasts ${forecasts.join(', ')} s\n${done.stderr}`);
  assert.ok(ran >= 1, 'incremental cycles ran back to back');
  assert.equal(engine.getJob('shrink').state, 'completing');
  assert.ok(forecasts.at(-1)! <= bound, `the last forecast ${forecasts.at(-1)} s fits the ${bound} s bound`);
  const t0 = performance.now();
  await engine.runNow('shrink');
  const finalSeconds = (performance.now() - t0) / 1000;
  console.log(`converge figures: the final sync took ${finalSeconds.toFixed(2)} s against the ${bound} s bound`);
  assert.equal(engine.getJob('shrink').state, 'completed', JSON.stringify(engine.getJob('shrink').error));
  assert.ok(finalSeconds <= bound * 1.3, `the final sync (${finalSeconds.toFixed(2)} s) kept to the bound (${bound} s, +30 %)`);

  // Growing: the rate doubles at every snapshot (up to 8 MB/s), from a rate whose first cycle alone is over the bound.
  const gbound = await warmUp('grow', 'vm-0002', 3e6, 1.5);
  factor.set(lab.vm('vm-0002').moref, 2);
  const refused = await vmlift(['job', 'complete', 'grow', '--max-final-sync', `${gbound}s`, '--yes', '--home', api.home, '--json'], ENV);
  await writers.get(lab.vm('vm-0002').moref)!.stop();
  const err = (JSON.parse(refused.stdout) as { error: { code: string; message: string; fix: string } }).error;
  console.log(`converge figures (growing): bound ${gbound} s: ${err.message}`);
  assert.equal(refused.code, 1, refused.stderr);
  assert.equal(err.code, 'FINAL_SYNC_UNREACHABLE');
  // Either reason is the growing rate's: the forecasts stop shrinking, or the steps that grow with it (snapshot removal, commit) fill the bound.
  assert.match(err.message, /grow: unreachable: (the final sync stopped shrinking \(forecasts |the fixed part of a cycle alone)/);
  assert.match(err.message, /change rate per cycle [\d.]+ [KMG]iB\/h, [\d.]+ [KMG]iB\/h/, 'the measured rates');
  assert.match(err.message, /throughput [\d.]+ MB\/s/);
  assert.match(err.fix, /larger --max-final-sync/);
  assert.equal(engine.getJob('grow').state, 'waiting', 'the job keeps syncing');
});
