import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRig, settings, liveSha, imageSha, guestWrites, MiB } from './harness.ts';
import { UserError } from '../../src/util/errors.ts';

test('a job over a VM with two disks: full cycle, incrementals, complete; images match each snapshot; retention; no snapshot left', async (t) => {
  const rig = await startRig();
  t.after(() => rig.close());
  const { lab, engine, rx } = rig;
  const vm = lab.vm('two-disks');
  for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 40);

  engine.createJob({ id: 'two-disks', vmRef: vm.moref, settings: settings({ maxImages: 2 }) });
  engine.start('two-disks');
  const expected1 = await Promise.all(vm.disks.map((d) => liveSha(lab, vm.name, d.key, d.capacity)));
  // Guest writes while the cycle runs (after its snapshot) must not leak into its image.
  let duringCycle = 0;
  rig.hooks.afterSnapshot = async () => { for (const d of vm.disks) duringCycle += await guestWrites(lab, vm.name, d.key, d.capacity, 8); };
  await engine.runNow('two-disks');
  rig.hooks.afterSnapshot = undefined;

  let job = engine.getJob('two-disks');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  assert.ok(job.nextSyncAt && Date.parse(job.nextSyncAt) > Date.now() + 3500_000, 'next sync one interval ahead');
  const [c1] = rig.state.listCycles('two-disks');
  assert.equal(c1!.state, 'committed');
  assert.equal(c1!.kind, 'full');
  for (const [i, d] of vm.disks.entries()) {
    assert.equal(await imageSha(rx, job.sourceId, c1!.imageId!, i, d.capacity), expected1[i], `disk ${d.key} of image 1 is the disk at snapshot 1`);
  }
  assert.ok(rig.state.getDisks('two-disks').every((d) => d.changeId && /\/\d+$/.test(d.changeId)), 'changeIds recorded');

  // Incremental: only what changed is read and sent.
  const written = await guestWrites(lab, vm.name, vm.disks[0]!.key, vm.disks[0]!.capacity, 16);
  const expected2 = await Promise.all(vm.disks.map((d) => liveSha(lab, vm.name, d.key, d.capacity)));
  engine.requestSync('two-disks');
  await engine.runNow('two-disks');
  job = engine.getJob('two-disks');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  const [c2] = rig.state.listCycles('two-disks');
  assert.equal(c2!.kind, 'incremental');
  for (const [i, d] of vm.disks.entries()) {
    assert.equal(await imageSha(rx, job.sourceId, c2!.imageId!, i, d.capacity), expected2[i], `disk ${d.key} of image 2`);
  }
  const changedBound = written + duringCycle;
  assert.ok(c2!.changedBytes <= changedBound, `CBT areas ${c2!.changedBytes} <= written ${changedBound}`);
  assert.ok(c2!.sourceBytesRead <= c2!.changedBytes, `read ${c2!.sourceBytesRead} <= changed ${c2!.changedBytes}`);
  assert.ok(c2!.wireBytes < 1.1 * c2!.changedBytes + MiB, `wire ${c2!.wireBytes} tracks changed ${c2!.changedBytes}`);
  const capacity = vm.disks.reduce((n, d) => n + d.capacity, 0);
  assert.ok(c2!.sourceBytesRead < capacity / 4, 'an incremental reads far less than the disks');

  // Complete: one final cycle, then completed; a second complete is refused.
  await guestWrites(lab, vm.name, vm.disks[1]!.key, vm.disks[1]!.capacity, 4);
  const expected3 = await Promise.all(vm.disks.map((d) => liveSha(lab, vm.name, d.key, d.capacity)));
  assert.equal(engine.complete('two-disks').state, 'completing');
  assert.throws(() => engine.complete('two-disks'), (e: unknown) => e instanceof UserError && /already completing/.test(e.message));
  await engine.runNow('two-disks');
  job = engine.getJob('two-disks');
  assert.equal(job.state, 'completed', JSON.stringify(job.error));
  const [c3] = rig.state.listCycles('two-disks');
  assert.equal(c3!.kind, 'final');
  for (const [i, d] of vm.disks.entries()) {
    assert.equal(await imageSha(rx, job.sourceId, c3!.imageId!, i, d.capacity), expected3[i], `disk ${d.key} of the final image`);
  }
  assert.throws(() => engine.complete('two-disks'), (e: unknown) => e instanceof UserError && /already completed/.test(e.message) && !!e.fix);
  assert.deepEqual(engine.dueJobs().map((j) => j.id), [], 'a completed job runs no more cycles');

  const images = await rx.rx.store.listImages(job.sourceId);
  assert.deepEqual(images.map((i) => i.imageId), [c2!.imageId, c3!.imageId], 'max 2 images: the two newest are kept');
  assert.equal((await rig.vc.snapshots(vm.moref)).snapshots.length, 0, 'no snapshot left on the VM');
  assert.equal(rig.counters.snapshotsCreated, 3);
});

test('an injected snapshot failure and an expired session are retried; a CBT reset forces a full cycle', async (t) => {
  const rig = await startRig({ vms: 1 });
  t.after(() => rig.close());
  const { lab, engine, rx } = rig;
  const vm = lab.vm('vm-0001');
  const d = vm.disks[0]!;
  await guestWrites(lab, vm.name, d.key, d.capacity, 30);
  engine.createJob({ id: 'web', vmRef: vm.moref, settings: settings() });
  engine.start('web');
  await engine.runNow('web');
  assert.equal(engine.getJob('web').state, 'waiting', JSON.stringify(engine.getJob('web').error));

  await lab.injectFault('createSnapshot');
  await lab.expireSessions();
  await guestWrites(lab, vm.name, d.key, d.capacity, 5);
  const expected = await liveSha(lab, vm.name, d.key, d.capacity);
  engine.requestSync('web');
  await engine.runNow('web');
  let job = engine.getJob('web');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  let [c] = rig.state.listCycles('web');
  assert.equal(c!.kind, 'incremental');
  assert.equal(await imageSha(rx, 'web', c!.imageId!, 0, d.capacity), expected);
  assert.equal((await rig.vc.snapshots(vm.moref)).snapshots.length, 0, 'the failed attempt left no snapshot');

  await lab.resetCbt(vm.name, d.key);
  await guestWrites(lab, vm.name, d.key, d.capacity, 3);
  const expected2 = await liveSha(lab, vm.name, d.key, d.capacity);
  engine.requestSync('web');
  await engine.runNow('web');
  job = engine.getJob('web');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  [c] = rig.state.listCycles('web');
  assert.equal(c!.kind, 'full');
  assert.match(c!.reason ?? '', /CBT was reset/);
  assert.equal(await imageSha(rx, 'web', c!.imageId!, 0, d.capacity), expected2);

  // delete --remove-images: the job, its snapshots and its images on the receiver are gone.
  assert.ok((await rx.rx.store.listImages('web')).length >= 3);
  await engine.delete('web', { removeImages: true });
  assert.equal(rig.state.getJob('web'), undefined);
  assert.deepEqual(await rx.rx.store.listImages('web').catch(() => []), []);
  assert.equal((await rig.vc.snapshots(vm.moref)).snapshots.length, 0);
});

test('a persistent failure moves the job to error with the failing step; resume retries it', async (t) => {
  const rig = await startRig({ vms: 1, retry: { attempts: 2, baseDelayMs: 20, maxDelayMs: 50 } });
  t.after(() => rig.close());
  const { lab, engine } = rig;
  const vm = lab.vm('vm-0001');
  engine.createJob({ id: 'db', vmRef: vm.moref, settings: settings() });
  engine.start('db');
  await lab.injectFault('createSnapshot', 2);
  await engine.runNow('db');
  const job = engine.getJob('db');
  assert.equal(job.state, 'error');
  assert.equal(job.error?.step, 'snapshot');
  assert.match(job.error?.message ?? '', /injected by the lab/);
  assert.equal(job.error?.code, 'VC_TASK_FAILED');
  assert.match(job.error?.fix ?? '', /Monitor → Tasks/);
  assert.equal(job.error?.attempts, 2);
  assert.equal(rig.state.listCycles('db')[0]!.state, 'failed');
  assert.equal(rig.state.getDisks('db').length, 0, 'a failed cycle records no changeIds');
  assert.equal(engine.resume('db').state, 'syncing');
  await engine.runNow('db');
  assert.equal(engine.getJob('db').state, 'waiting', JSON.stringify(engine.getJob('db').error));
  assert.equal((await rig.vc.snapshots(vm.moref)).snapshots.length, 0);
});

test('bandwidth changed while a cycle runs takes effect at once; pause keeps the cycle and resume continues it', async (t) => {
  const rig = await startRig();
  t.after(() => rig.close());
  const { lab, engine, rx } = rig;
  const vm = lab.vm('two-disks');
  for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 160);
  const expected = await Promise.all(vm.disks.map((d) => liveSha(lab, vm.name, d.key, d.capacity)));
  // 1 Mbps = 125 kB/s: the ~15 MiB of this cycle would take about two minutes.
  engine.createJob({ id: 'slow', vmRef: vm.moref, settings: settings({ bandwidthMbps: 1, compression: 0 }) });
  engine.start('slow');
  const started = Date.now();
  let run = engine.runNow('slow');
  await waitUntil(() => (engine.live('slow')?.disks ?? []).some((d) => d.done > 0), 60_000);
  engine.pause('slow');
  await run;
  assert.equal(engine.getJob('slow').state, 'paused');
  const [paused] = rig.state.listCycles('slow');
  assert.equal(paused!.state, 'running', 'a paused cycle stays open for resume');
  assert.equal((await rig.vc.snapshots(vm.moref)).snapshots.length, 0, 'pause removed the snapshot');

  // The guest rewrites every byte while the job is paused: what the receiver holds of the cycle is now
  // of an earlier point in time, and the resumed cycle (on a new snapshot) must not keep any of it.
  for (const d of vm.disks) {
    for (let off = 0; off < d.capacity; off += 4 * 1024 * 1024) await lab.write(vm.name, d.key, off, randomBytes(Math.min(4 * 1024 * 1024, d.capacity - off)));
  }
  const expectedAfterPause = await Promise.all(vm.disks.map((d) => liveSha(lab, vm.name, d.key, d.capacity)));
  assert.notDeepEqual(expectedAfterPause, expected);

  assert.equal(engine.resume('slow').state, 'syncing');
  run = engine.runNow('slow');
  await waitUntil(() => (engine.live('slow')?.disks ?? []).some((d) => d.done > 0), 60_000);
  const raised = Date.now();
  engine.updateSettings('slow', { bandwidthMbps: 0 });
  await run;
  const afterRaise = (Date.now() - raised) / 1000;
  const job = engine.getJob('slow');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  assert.equal(job.settings.bandwidthMbps, 0);
  assert.ok(afterRaise < 45, `lifting the limit finished the cycle in ${afterRaise.toFixed(1)} s (at 1 Mbps it needed > 100 s)`);
  const cycles = rig.state.listCycles('slow');
  assert.equal(cycles.length, 1, 'the paused cycle was continued, not restarted');
  assert.equal(cycles[0]!.id, paused!.id);
  for (const [i, d] of vm.disks.entries()) assert.equal(await imageSha(rx, job.sourceId, cycles[0]!.imageId!, i, d.capacity), expectedAfterPause[i]);
  assert.ok(Date.now() - started < 120_000);
});

async function waitUntil(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}
