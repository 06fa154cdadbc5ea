/**
 * `job complete --max-final-sync` on the lab, through the CLI against the connector API over a rig:
 * with a change rate that halves every cycle the incrementals converge and the job completes (--yes);
 * without --yes it asks first. The bound is the lab's measured fixed part of a cycle plus 1.5 s, so
 * that the test means the same on a loaded machine as on a quiet one. The growing rate:
 * converge-unreachable-lab.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { convergeRig } from './final-sync-helpers.ts';
import { settings } from './harness.ts';
import { vmlift } from '../vsphere/helpers.ts';
import { FinalSyncConvergence } from '../../src/engine/converge.ts';
import { UserError } from '../../src/util/errors.ts';

const ENV = { VMLIFT_CONVERGE_POLL_MS: '250' };

test('--max-final-sync converges on a shrinking change rate, asks to stop the services, then completes', async (t) => {
  const { rig, home, factor, writers, warmUp } = await convergeRig(t, 1);
  const { lab, engine } = rig;
  assert.throws(() => new FinalSyncConvergence(engine).start('nope', { maxFinalSyncSeconds: 60 }), (e: unknown) => e instanceof UserError && e.code === 'NO_JOB');
  engine.createJob({ id: 'fresh', vmRef: lab.vm('vm-0001').moref, settings: settings() });
  assert.throws(() => new FinalSyncConvergence(engine).start('fresh', { maxFinalSyncSeconds: 60 }),
    (e: unknown) => e instanceof UserError && e.code === 'CANNOT_CONVERGE' && /fresh is created/.test(e.message) && /vmlift job start fresh/.test(e.fix ?? ''));
  await engine.delete('fresh');

  // The rate halves at every snapshot.
  const bound = await warmUp('shrink', 'vm-0001', 3e6, 1.5);
  const vmRef = lab.vm('vm-0001').moref;
  // Without --yes the command asks; a closed stdin is no answer, and the job keeps syncing.
  const asked = await vmlift(['job', 'complete', 'shrink', '--max-final-sync', '1h', '--home', home], ENV);
  assert.equal(asked.code, 1, asked.stderr);
  assert.match(asked.stderr, /Stop the services on the source now/);
  assert.match(asked.stderr, /the final sync was not confirmed/);
  assert.match(asked.stderr, /fix: stop the services, then run the command again with --yes/);
  assert.equal(engine.getJob('shrink').state, 'waiting');

  factor.set(vmRef, 0.5);
  const before = rig.state.listCycles('shrink', 100).length;
  const done = await vmlift(['job', 'complete', 'shrink', '--max-final-sync', `${bound}s`, '--yes', '--home', home], ENV);
  await writers.get(vmRef)!.stop(); // the services stop
  assert.equal(done.code, 0, done.stderr);
  assert.match(done.stdout, /job shrink: completing \(final sync forecast ~/);
  const ran = rig.state.listCycles('shrink', 100).length - before;
  const forecasts = [...done.stderr.matchAll(/after cycle \S+: final sync forecast ~([\d.]+) s/g)].map((m) => Number(m[1]));
  console.log(`converge figures (shrinking): bound ${bound} s, ${ran} cycles, forecasts ${forecasts.join(', ')} s\n${done.stderr}`);
  assert.ok(ran >= 1, 'incremental cycles ran back to back');
  assert.equal(forecasts.length, ran, 'a forecast after each cycle');
  assert.equal(engine.getJob('shrink').state, 'completing');
  assert.ok(forecasts.at(-1)! <= bound, `the last forecast ${forecasts.at(-1)} s fits the ${bound} s bound`);
  const t0 = performance.now();
  await engine.runNow('shrink');
  const finalSeconds = (performance.now() - t0) / 1000;
  console.log(`converge figures: the final sync took ${finalSeconds.toFixed(2)} s against the ${bound} s bound`);
  assert.equal(engine.getJob('shrink').state, 'completed', JSON.stringify(engine.getJob('shrink').error));
  assert.ok(finalSeconds <= bound * 1.3, `the final sync (${finalSeconds.toFixed(2)} s) kept to the bound (${bound} s, +30 %)`);
});
