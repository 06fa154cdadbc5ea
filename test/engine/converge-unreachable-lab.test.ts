/**
 * `--max-final-sync` refuses a bound a growing change rate makes unreachable, naming the measured
 * rates, and leaves the job syncing; `workgroup complete --max-final-sync` converges every member and
 * completes none while one cannot. Through the CLI against the connector API over a lab rig.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { convergeRig } from './final-sync-helpers.ts';
import { vmlift } from '../vsphere/helpers.ts';

const ENV = { VMLIFT_CONVERGE_POLL_MS: '250' };

test('--max-final-sync refuses on a growing change rate with the measured rates; a workgroup completes only when every member fits', async (t) => {
  const { rig, home, factor, writers, warmUp } = await convergeRig(t, 1);
  const { lab, engine } = rig;
  const vmRef = lab.vm('vm-0001').moref;
  // The rate doubles at every snapshot (up to 6 MB/s, above the 5 MB/s the 40 Mbps limit carries).
  const bound = await warmUp('grow', 'vm-0001', 3e6, 1.5);
  factor.set(vmRef, 2);
  const refused = await vmlift(['job', 'complete', 'grow', '--max-final-sync', `${bound}s`, '--yes', '--home', home, '--json'], ENV);
  await writers.get(vmRef)!.stop();
  assert.equal(refused.code, 1, refused.stderr);
  const err = (JSON.parse(refused.stdout) as { error: { code: string; message: string; fix: string } }).error;
  console.log(`converge figures (growing): bound ${bound} s: ${err.message}`);
  assert.equal(err.code, 'FINAL_SYNC_UNREACHABLE');
  // Either reason is the growing rate's: the forecasts stop shrinking, or the steps that grow with it (snapshot removal, commit) fill the bound.
  assert.match(err.message, /grow: unreachable: (the final sync stopped shrinking \(forecasts |the fixed part of a cycle alone)/);
  assert.match(err.message, /change rate per cycle [\d.]+ [KMG]iB\/h, [\d.]+ [KMG]iB\/h/, 'the measured rates');
  assert.match(err.message, /throughput [\d.]+ MB\/s/);
  assert.match(err.fix, /larger --max-final-sync/);
  assert.equal(engine.getJob('grow').state, 'waiting', 'the job keeps syncing');

  // A workgroup converges every member; one that cannot (never started) is named and nothing completes.
  engine.createJob({ id: 'fresh', vmRef, settings: engine.getJob('grow').settings });
  rig.state.createWorkgroup('wg', 'wg');
  rig.state.addToWorkgroup('wg', 'fresh');
  rig.state.addToWorkgroup('wg', 'grow');
  const wgRefused = await vmlift(['workgroup', 'complete', 'wg', '--max-final-sync', '1h', '--yes', '--home', home, '--json'], ENV);
  assert.equal(wgRefused.code, 1, wgRefused.stderr);
  const wgErr = (JSON.parse(wgRefused.stdout) as { error: { code: string; message: string; fix: string } }).error;
  assert.equal(wgErr.code, 'CONVERGE_FAILED');
  assert.match(wgErr.message, /^fresh: job fresh is created; --max-final-sync runs incremental cycles/);
  assert.match(wgErr.fix, /nothing was completed/);
  assert.equal(engine.getJob('grow').state, 'waiting', 'nothing completed');
  rig.state.removeFromWorkgroup('wg', 'fresh');
  const wgDone = await vmlift(['workgroup', 'complete', 'wg', '--max-final-sync', '1h', '--yes', '--home', home, '--json'], ENV);
  assert.equal(wgDone.code, 0, wgDone.stderr);
  const out = JSON.parse(wgDone.stdout) as { converge: { jobId: string; state: string }[]; results: { jobId: string; ok: boolean; state: string }[] };
  assert.deepEqual(out.converge.map((c) => [c.jobId, c.state]), [['grow', 'converged']]);
  assert.deepEqual(out.results.map((r) => [r.jobId, r.ok, r.state]), [['grow', true, 'completing']]);
  await engine.runNow('grow');
  assert.equal(engine.getJob('grow').state, 'completed', JSON.stringify(engine.getJob('grow').error));
});
