/**
 * Drills (`job drill`): the receiver inspects, converts and boot-tests the lab guest's image while the
 * job's incremental cycle runs; both finish correctly. The drilled image is pinned (retention keeps it
 * until the drill ends, then removes it), its content does not change, the job's state and next sync
 * are untouched, and the report with its console PNG reaches the connector side. A job without an
 * image is refused with the reason.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRig, settings, imageSha, liveSha } from '../engine/harness.ts';
import { JobDrills } from '../../src/engine/drills.ts';
import { silentLogger } from '../../src/util/log.ts';
import type { DrillReport } from '../../src/transfer/contract.ts';

test('a drill of the lab guest runs while an incremental cycle is in flight: both finish, the drill passes (converted, login reached), the drilled image is pinned and unchanged, the job untouched', async (t) => {
  const rig = await startRig({ guest: true, drills: true });
  t.after(() => rig.close());
  const { lab, engine, rx, state } = rig;
  const vm = lab.vm('guest-debian');
  const disk = vm.disks[0]!;
  engine.createJob({ id: 'guest', vmRef: vm.moref, settings: settings({ compression: 0, maxImages: 1 }) });
  engine.start('guest');
  await engine.runNow('guest');
  assert.equal(engine.getJob('guest').state, 'waiting', JSON.stringify(engine.getJob('guest').error));
  const job = engine.getJob('guest');
  const image1 = state.listCycles('guest', 1)[0]!.imageId!;
  const image1Sha = await imageSha(rx, job.sourceId, image1, 0, disk.capacity);

  const reports = await mkdtemp(join(tmpdir(), 'vmlift-drill-home-'));
  t.after(() => rm(reports, { recursive: true, force: true }));
  const drills = new JobDrills({ state, service: rig.drillService, reportRoot: reports, logger: silentLogger, pollMs: 500 });
  t.after(() => drills.close());
  await assert.rejects(drills.start('nope'), /no job nope/);

  const t0 = Date.now();
  const started = await drills.start('guest');
  assert.equal(started.imageId, image1);
  await assert.rejects(drills.start('guest'), (e: Error & { code?: string }) => e.code === 'DRILL_RUNNING');

  // The guest writes a file and the job syncs, while the drill runs.
  await lab.guestWrite(vm.name, '/var/lib/app/during-drill', `written at ${new Date().toISOString()}\n`);
  const expected2 = await liveSha(lab, vm.name, disk.key, disk.capacity);
  const t1 = Date.now();
  await engine.runNow('guest');
  const cycleSeconds = (Date.now() - t1) / 1000;
  const afterCycle = engine.getJob('guest');
  assert.equal(afterCycle.state, 'waiting', JSON.stringify(afterCycle.error));
  const image2 = state.listCycles('guest', 1)[0]!.imageId!;
  assert.notEqual(image2, image1);
  assert.equal(await imageSha(rx, job.sourceId, image2, 0, disk.capacity), expected2, 'the cycle that ran beside the drill is bit-identical');
  const during = (await rx.rx.store.listImages(job.sourceId)).map((i) => i.imageId);
  // The drill converts under TCG for minutes; the cycle takes well under one.
  const now = state.listDrills('guest', 1)[0]!;
  assert.ok(!now.endedAt, `the drill was still running when the cycle ended (${JSON.stringify(now.report)})`);
  assert.ok(during.includes(image1), `retention (max 1 image) kept the pinned image ${image1} while the drill ran (${during.join(', ')})`);

  const done = await drills.wait(started.id);
  const drillSeconds = (Date.now() - t0) / 1000;
  const r = done.report as unknown as DrillReport;
  t.diagnostic(`drill: ${drillSeconds.toFixed(0)} s (${r.steps.map((s) => `${s.step} ${s.seconds.toFixed(0)} s`).join(', ')}); the cycle beside it: ${cycleSeconds.toFixed(0)} s`);
  assert.equal(done.verdict, 'drill passed', JSON.stringify({ failure: r.failure, steps: r.steps, tail: r.consoleTail.slice(-8) }));
  assert.deepEqual(r.steps.map((s) => [s.step, s.ok]), [['inspect', true], ['convert', true], ['boot', true]]);
  assert.match(r.steps[0]!.message, /needs conversion/);
  assert.ok(r.secondsToLogin! > 0);
  assert.equal(r.screenshot, true);
  const png = await readFile(join(done.reportDir!, 'console.png'));
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'the console screenshot is a PNG');
  assert.equal((JSON.parse(await readFile(join(done.reportDir!, 'report.json'), 'utf8')) as DrillReport).verdict, 'drill passed');

  const jobAfter = engine.getJob('guest');
  assert.deepEqual([jobAfter.state, jobAfter.nextSyncAt, jobAfter.updatedAt], [afterCycle.state, afterCycle.nextSyncAt, afterCycle.updatedAt], 'the drill changed nothing of the job');
  assert.equal(await imageSha(rx, job.sourceId, image1, 0, disk.capacity), image1Sha, 'the drilled image is unchanged');
  // Unpinned, the next retention removes it.
  await engine.runNow('guest');
  assert.ok(!(await rx.rx.store.listImages(job.sourceId)).some((i) => i.imageId === image1), 'once the drill ended, retention removed the old image');
  assert.equal((await rx.rx.store.listImages(job.sourceId)).length, 1);
});
