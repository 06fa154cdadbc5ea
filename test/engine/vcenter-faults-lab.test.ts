/**
 * vCenter faults at the level of a job (issue 12 §3), against the lab vCenter: a snapshot removal
 * that fails (the snapshot is swept by the next cycle), slow snapshot tasks (waited for, the step
 * shows), sessions that end in the middle of a cycle (re-login, the cycle finishes), a removal that
 * leaves the VM needing consolidation (ConsolidateVMDisks_Task, the flag cleared) and a vCenter that
 * restarts in the middle of a cycle (every session gone, /sdk and /folder answering 503 for a while).
 * Each case checks the job's final state, each image's SHA-256 against the snapshot's view, and that
 * no snapshot is left on the VM. (Snapshot-create failures, retried and persistent, are in job-lab.test.ts.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startRig, settings, liveSha, imageSha, guestWrites, type EngineRig } from './harness.ts';
import { fetchVmByRef } from '../../src/vsphere/inventory.ts';

/** Runs one cycle of job `id` (created on first use) over vm-0001 and checks its image against the disk at its snapshot. */
async function cycleChecked(rig: EngineRig, id: string, during?: () => Promise<void>): Promise<{ ms: number }> {
  const { lab, engine, rx } = rig;
  const vm = lab.vm('vm-0001');
  const d = vm.disks[0]!;
  await guestWrites(lab, vm.name, d.key, d.capacity, 20);
  const expected = await liveSha(lab, vm.name, d.key, d.capacity);
  if (!rig.state.getJob(id)) {
    engine.createJob({ id, vmRef: vm.moref, settings: settings() });
    engine.start(id);
  } else {
    engine.requestSync(id);
  }
  const before = rig.state.listCycles(id).length;
  const t0 = Date.now();
  const run = engine.runNow(id);
  await during?.();
  await run;
  const ms = Date.now() - t0;
  const job = engine.getJob(id);
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  const cycles = rig.state.listCycles(id);
  assert.equal(cycles.length, before + 1, 'one cycle, retried in place, not a new one per attempt');
  assert.equal(cycles[0]!.state, 'committed');
  assert.equal(await imageSha(rx, job.sourceId, cycles[0]!.imageId!, 0, d.capacity), expected, 'the image is the disk at the snapshot');
  return { ms };
}

const vmlift = async (rig: EngineRig) => (await rig.vc.snapshots(rig.lab.vm('vm-0001').moref)).snapshots.filter((s) => s.name.startsWith('vmlift-'));

async function waitUntil(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

test('vCenter faults in a cycle: a failed snapshot removal is retried, one that keeps failing is swept next cycle; slow tasks are waited for, their progress shown; sessions ended mid-cycle are logged in again; consolidation needed is consolidated', async (t) => {
  const rig = await startRig({ vms: 1, diskMb: 16 });
  t.after(() => rig.close());
  const { lab, vc } = rig;
  const vm = lab.vm('vm-0001');

  // (The first cycle turns CBT on, with a stun: a snapshot create and remove of its own.)
  await cycleChecked(rig, 'j');
  // RemoveSnapshot_Task fails once: the cleanup tries it again (after 1 s) and nothing is left.
  await lab.injectFault('removeSnapshot');
  t.diagnostic(`removal failed once: cycle ${(await cycleChecked(rig, 'j')).ms} ms`);
  assert.deepEqual(await vmlift(rig), [], 'a removal that failed once was retried');
  // It fails on every try (1 + 4 retries): the cycle still commits, its snapshot stays until the next sweep.
  await lab.injectFault('removeSnapshot', 5);
  t.diagnostic(`removal failed for good: cycle ${(await cycleChecked(rig, 'j')).ms} ms`);
  const left = await vmlift(rig);
  assert.equal(left.length, 1, 'the snapshot whose removal failed is still on the VM');
  assert.equal(rig.engine.getJob('j').error, null, 'a failed cleanup does not fail the committed cycle');
  await cycleChecked(rig, 'j');
  assert.deepEqual(await vmlift(rig), [], 'the next cycle swept the leftover and removed its own');

  // Slow tasks: create and remove each stay `running` (with progress) for 1.5 s; the job shows the step meanwhile.
  await lab.delayTasks('createSnapshot', 1500);
  await lab.delayTasks('removeSnapshot', 1500);
  const steps = new Set<string>();
  const progress: string[] = [];
  const slow = await cycleChecked(rig, 'j', async () => {
    for (let l = rig.engine.live('j'); l; l = rig.engine.live('j')) {
      steps.add(l.step);
      if (l.taskProgress !== undefined && progress.at(-1) !== `${l.step} ${l.taskProgress}`) progress.push(`${l.step} ${l.taskProgress}`);
      await sleep(50);
    }
  });
  await lab.delayTasks('createSnapshot', 0);
  await lab.delayTasks('removeSnapshot', 0);
  t.diagnostic(`slow tasks (2 x 1.5 s): cycle ${slow.ms} ms`);
  assert.ok(slow.ms >= 3000, `the cycle waited for both slow tasks (${slow.ms} ms)`);
  assert.ok(steps.has('snapshot'), `the job showed the snapshot step while its task ran (${[...steps].join(', ')})`);
  // vCenter's task progress reaches the job's live status (`job show --json`) while the cycle waits
  for (const st of ['snapshot', 'cleanup']) {
    assert.ok(progress.some((x) => new RegExp(`^${st} ([1-9]|[1-9]\\d)$`).test(x)), `${st}: progress between 0 and 100 seen (${progress.join(', ')})`);
  }
  t.diagnostic(`task progress seen: ${progress.join(', ')}`);
  assert.deepEqual(await vmlift(rig), []);

  // Sessions end right after the snapshot and again in the middle of the transfer.
  const relogins = vc.session.relogins;
  let expired = 0;
  rig.hooks.afterSnapshot = async () => { expired += await lab.expireSessions(); };
  const snaps = rig.counters.snapshotsCreated;
  const exp = await cycleChecked(rig, 'j', async () => {
    await waitUntil(() => (rig.engine.live('j')?.disks ?? []).some((x) => x.done > 0) || !rig.engine.live('j'), 60_000, 'the transfer');
    expired += await lab.expireSessions();
  });
  rig.hooks.afterSnapshot = undefined;
  t.diagnostic(`sessions ended twice in a cycle: cycle ${exp.ms} ms, ${rig.counters.snapshotsCreated - snaps} snapshot(s)`);
  assert.ok(expired >= 2, `sessions were ended (${expired})`);
  assert.equal(rig.counters.snapshotsCreated - snaps, 1, 'the datastore reads logged in again themselves: no second cycle attempt');
  assert.ok(vc.session.relogins > relogins, `the connector logged in again (${vc.session.relogins - relogins} times)`);
  assert.deepEqual(await vmlift(rig), []);

  // The snapshot removal leaves runtime.consolidationNeeded set: the cycle consolidates the disks.
  await lab.injectFault('needConsolidation');
  const cons = await cycleChecked(rig, 'j');
  t.diagnostic(`consolidation needed: cycle ${cons.ms} ms`);
  assert.equal((await fetchVmByRef(vc.session, vm.moref)).consolidationNeeded, false, 'ConsolidateVMDisks_Task cleared the flag');
  assert.deepEqual(await vmlift(rig), []);
});

test('vCenter restarting in the middle of a cycle (sessions gone, 503 for 3 s): the cycle retries and finishes bit-identical, no snapshot left; an outage longer than the retries ends in VC_UNAVAILABLE and job resume finishes', async (t) => {
  const rig = await startRig({ vms: 1, diskMb: 16, retry: { attempts: 4, baseDelayMs: 1000, maxDelayMs: 4000 } });
  t.after(() => rig.close());
  const { lab } = rig;
  await cycleChecked(rig, 'r');
  // vCenter goes away right after the snapshot (the cycle's next calls meet it) and the reads last beyond it.
  let restartedAt = 0;
  rig.hooks.afterSnapshot = async () => {
    if (restartedAt) return;
    restartedAt = Date.now();
    await lab.restartVcenter(3000);
  };
  const created = rig.counters.snapshotsCreated;
  const { ms } = await cycleChecked(rig, 'r');
  rig.hooks.afterSnapshot = undefined;
  assert.ok(restartedAt > 0);
  assert.ok(ms >= 3000, `the cycle outlasted the restart (${ms} ms)`);
  assert.ok(rig.counters.snapshotsCreated - created >= 2, `the cycle was retried on a new snapshot (${rig.counters.snapshotsCreated - created} snapshots)`);
  t.diagnostic(`restart of 3 s: cycle ${ms} ms, ${rig.counters.snapshotsCreated - created} attempts, ${rig.vc.session.relogins} re-logins`);
  assert.deepEqual(await vmlift(rig), [], 'no snapshot left');

  // An outage longer than the job's retries (1 + 2 + 4 s here): the job ends in error with VC_UNAVAILABLE
  // and its fix; once vCenter is back, `job resume` finishes the cycle.
  const { lab: l, engine } = rig;
  await guestWrites(l, 'vm-0001', d0(rig).key, d0(rig).capacity, 10);
  const expected = await liveSha(l, 'vm-0001', d0(rig).key, d0(rig).capacity);
  restartedAt = 0;
  rig.hooks.afterSnapshot = async () => {
    if (restartedAt) return;
    restartedAt = Date.now();
    await l.restartVcenter(120_000);
  };
  engine.requestSync('r');
  const t0 = Date.now();
  await engine.runNow('r');
  rig.hooks.afterSnapshot = undefined;
  const failedAfter = Date.now() - t0;
  const job = engine.getJob('r');
  assert.equal(job.state, 'error');
  assert.equal(job.error?.code, 'VC_UNAVAILABLE');
  assert.equal(job.error?.attempts, 4);
  assert.match(job.error!.message, /answered \w+ with HTTP 503: it is restarting or overloaded/);
  assert.match(job.error!.fix ?? '', /vmlift job resume/);
  await l.restartVcenter(0);
  // The snapshot of the attempt the outage met could not be removed while vCenter was away: resume sweeps it.
  assert.equal(engine.resume('r').state, 'syncing');
  await engine.runNow('r');
  const after = engine.getJob('r');
  assert.equal(after.state, 'waiting', JSON.stringify(after.error));
  const [c] = rig.state.listCycles('r');
  assert.equal(await imageSha(rig.rx, 'r', c!.imageId!, 0, d0(rig).capacity), expected);
  assert.deepEqual(await vmlift(rig), [], 'no snapshot left after the resume');
  t.diagnostic(`outage longer than the retries: job in error after ${failedAfter} ms (4 attempts)`);
});

const d0 = (rig: EngineRig) => rig.lab.vm('vm-0001').disks[0]!;
