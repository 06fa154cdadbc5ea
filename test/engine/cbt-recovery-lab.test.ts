/**
 * CBT that goes away between cycles, against the lab: an administrator turns it off (the next cycle
 * re-enables it with a stun, reads every disk in full, and the one after is incremental again), a
 * CBT reset of one disk (that disk is read in full, the other incrementally), and CBT that cannot be
 * re-enabled (the job ends in error in the cbt step after bounded retries, no snapshot left).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRig, settings, liveSha, imageSha, guestWrites, type EngineRig } from './harness.ts';

/** One cycle (sync or the first) with guest writes before and during it; returns the cycle, checked bit-identical to its snapshot. */
async function cycle(rig: EngineRig, id: string, before?: () => Promise<void>) {
  const { lab, engine, rx } = rig;
  const vm = lab.vm('two-disks');
  for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 10);
  await before?.();
  const expected = await Promise.all(vm.disks.map((d) => liveSha(lab, vm.name, d.key, d.capacity)));
  rig.hooks.afterSnapshot = async () => { for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 6); };
  if (rig.state.listCycles(id).length === 0) engine.start(id); else engine.requestSync(id);
  await engine.runNow(id);
  rig.hooks.afterSnapshot = undefined;
  const job = engine.getJob(id);
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  const [c] = rig.state.listCycles(id);
  assert.equal(c!.state, 'committed');
  for (const [i, d] of vm.disks.entries()) {
    assert.equal(await imageSha(rx, job.sourceId, c!.imageId!, i, d.capacity), expected[i], `disk ${d.key} of cycle ${c!.seq} is the disk at its snapshot`);
  }
  return c!;
}

test('CBT turned off between cycles is re-enabled and the disks are read in full; a CBT reset of one disk reads only that disk in full; CBT that cannot be re-enabled ends the job', async (t) => {
  const rig = await startRig({ retry: { attempts: 3, baseDelayMs: 20, maxDelayMs: 50 } });
  t.after(() => rig.close());
  const { lab, engine, vc } = rig;
  const vm = lab.vm('two-disks');
  engine.createJob({ id: 'cbt', vmRef: vm.moref, settings: settings() });
  assert.equal((await cycle(rig, 'cbt')).kind, 'full');
  assert.equal((await cycle(rig, 'cbt')).kind, 'incremental');

  // An administrator turns CBT off (`vmlift vc cbt disable`) between cycles.
  let c = await cycle(rig, 'cbt', async () => { assert.equal((await vc.disableCbt(vm.moref)).changed, true); });
  assert.equal(c.kind, 'full', 'the cycle after CBT was off reads every disk in full');
  assert.match(c.reason ?? '', /disk 2000: CBT was turned off since the last cycle; vmlift re-enabled it/);
  assert.match(c.reason ?? '', /disk 2016: CBT was turned off/);
  assert.equal((await vc.vm(vm.moref)).changeTrackingEnabled, true, 'CBT is on again');
  assert.equal(engine.getJob('cbt').error, null);
  c = await cycle(rig, 'cbt');
  assert.equal(c.kind, 'incremental', 'then incremental again, from the new tracking\'s changeIds');
  assert.equal(c.reason, null);

  // CBT of one disk is reset (its changeIds start a new epoch): only that disk is read in full.
  c = await cycle(rig, 'cbt', () => lab.resetCbt(vm.name, 2016));
  assert.equal(c.kind, 'full');
  assert.match(c.reason ?? '', /^disk 2016: CBT was reset/);
  assert.doesNotMatch(c.reason ?? '', /disk 2000/, 'disk 2000 stays incremental');
  assert.equal((await cycle(rig, 'cbt')).kind, 'incremental');

  // CBT off, and vCenter refuses to turn it on again: the job ends in error in the cbt step after
  // its bounded retries (no loop), with no vmlift snapshot left; once vCenter accepts, a resume recovers.
  await vc.disableCbt(vm.moref);
  await lab.injectFault('reconfigure', 100);
  engine.requestSync('cbt');
  await engine.runNow('cbt');
  let job = engine.getJob('cbt');
  assert.equal(job.state, 'error');
  assert.equal(job.error?.step, 'cbt');
  assert.ok(job.error!.attempts <= 3, `bounded retries (${job.error!.attempts})`);
  assert.match(job.error!.message, /^cbt: enabling CBT on two-disks failed in vCenter: .*ReconfigVM_Task/);
  assert.ok(!engine.dueJobs().some((j) => j.id === 'cbt'), 'a job in error is not tried again by the scheduler');
  assert.deepEqual((await vc.snapshots(vm.moref)).snapshots, []);
  await lab.clearFaults();
  assert.equal(engine.resume('cbt').state, 'syncing');
  c = await cycle(rig, 'cbt');
  assert.equal(c.kind, 'full');
  assert.match(c.reason ?? '', /CBT was turned off since the last cycle/);
  job = engine.getJob('cbt');
  assert.equal(job.error, null);
});

test('a VM whose CBT cannot be enabled (hardware version vmx-04): a clear error, not a loop', async (t) => {
  const rig = await startRig({ retry: { attempts: 3, baseDelayMs: 20, maxDelayMs: 50 } });
  t.after(() => rig.close());
  const vm = rig.lab.vm('shape-vmx04');
  rig.engine.createJob({ id: 'old', vmRef: vm.moref, settings: settings() });
  rig.engine.start('old');
  await rig.engine.runNow('old');
  const job = rig.engine.getJob('old');
  assert.equal(job.state, 'error');
  assert.equal(job.error?.attempts, 1, 'not retried');
  assert.match(job.error!.message, /vmx-04|hardware version|change tracking/i);
  assert.ok(job.error!.fix, 'with a fix');
  assert.equal(rig.state.listCycles('old').length, 1);
  assert.deepEqual((await rig.vc.snapshots(vm.moref)).snapshots, []);
});
