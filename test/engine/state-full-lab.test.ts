/**
 * The connector's state folder fills up (a 4 MiB tmpfs) while a cycle runs, at two points: right
 * after the snapshot, and right after the receiver committed the image (the connector cannot
 * record it). Each time the job goes to `error` with STATE_NO_SPACE naming the folder, nothing is
 * recorded half-way (the cycle stays running, no changeId moves), the state stays readable, and
 * after space is freed `job resume` finishes the same cycle: one new image, recorded, bit-identical.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRig, settings, liveSha, imageSha, guestWrites } from './harness.ts';
import { canMount, smallFs } from '../util/small-fs.ts';
import type { CycleWriter } from '../../src/store/types.ts';

const skip = canMount() ? false : 'needs root to mount a tmpfs';

test('a full state folder: the job goes to error with STATE_NO_SPACE; after freeing space, resume finishes the same cycle', { skip, timeout: 240_000 }, async (t) => {
  const fs = smallFs(null, 4);
  const rig = await startRig({ vms: 1, diskMb: 16, stateDir: fs.dir, retry: { attempts: 2, baseDelayMs: 20, maxDelayMs: 50 } });
  t.after(async () => { await rig.close(); fs.cleanup(); });
  const { lab, engine, rx } = rig;
  const vm = lab.vm('vm-0001');
  const d = vm.disks[0]!;
  engine.createJob({ id: 'db', vmRef: vm.moref, settings: settings() });
  engine.start('db');
  await engine.runNow('db');
  assert.equal(engine.getJob('db').state, 'waiting', JSON.stringify(engine.getJob('db').error));
  // the engine tells the receiver what the cycle sends (its changed areas) before reading: the room check's estimate
  const begun = rx.log.lines.find((l) => l.msg === 'cycle begun' && l.sourceId === 'db');
  const [first] = rig.state.listCycles('db');
  assert.equal(begun?.estimatedBytes, first!.changedBytes, 'estimatedBytes = the changed areas of the first cycle');
  assert.ok(first!.changedBytes > 0);

  // the receiver's store, so that the filesystem can fill the moment the receiver has committed
  const store = rx.rx.store;
  const begin = store.beginCycle.bind(store);
  let fillAfterCommit = false;
  store.beginCycle = async (o) => {
    const w: CycleWriter = await begin(o);
    const commit = w.commit.bind(w);
    w.commit = async (c) => { const img = await commit(c); if (fillAfterCommit) fs.fill(0); return img; };
    return w;
  };

  for (const point of ['after the snapshot', 'after the receiver committed'] as const) {
    const before = rig.state.getDisks('db').map((x) => x.changeId);
    const imagesBefore = (await store.listImages('db')).length;
    await guestWrites(lab, vm.name, d.key, d.capacity, 20);
    const expected = await liveSha(lab, vm.name, d.key, d.capacity);
    engine.requestSync('db');
    if (point === 'after the snapshot') rig.hooks.afterSnapshot = async () => { fs.fill(0); };
    else fillAfterCommit = true;
    await engine.runNow('db');
    rig.hooks.afterSnapshot = undefined;
    fillAfterCommit = false;

    const job = engine.getJob('db');
    assert.equal(job.state, 'error', point);
    assert.equal(job.error?.code, 'STATE_NO_SPACE', JSON.stringify(job.error));
    assert.equal(job.error?.step, 'state');
    assert.match(job.error?.message ?? '', new RegExp(`state folder ${fs.dir}`));
    assert.match(job.error?.fix ?? '', new RegExp(`free space in ${fs.dir}.*job resume`));
    // nothing half-way: readable, the cycle still running, the changeIds those of the last recorded image
    const cycles = rig.state.listCycles('db');
    assert.equal(cycles[0]!.state, 'running', point);
    assert.deepEqual(rig.state.getDisks('db').map((x) => x.changeId), before, point);
    const onReceiver = (await store.listImages('db')).length - imagesBefore;
    assert.equal(onReceiver, point === 'after the snapshot' ? 0 : 1, point);
    assert.equal(engine.dueJobs().length, 0, 'the scheduler leaves a job in error alone');
    console.log(`figures: full ${point}: error at step ${job.error?.step}, images on the receiver +${onReceiver}, ${fs.freeBytes()} bytes free`);

    fs.unfill();
    assert.equal(engine.resume('db').state, 'syncing');
    await engine.runNow('db');
    const after = engine.getJob('db');
    assert.equal(after.state, 'waiting', JSON.stringify(after.error));
    const [c] = rig.state.listCycles('db');
    assert.equal(c!.state, 'committed');
    assert.equal(c!.id, cycles[0]!.id, 'the same cycle, resumed');
    const images = await store.listImages('db');
    assert.equal(images.length, imagesBefore + 1, 'one new image, not two');
    assert.equal(c!.imageId, images.at(-1)!.imageId, 'the receiver\'s image is recorded');
    assert.notDeepEqual(rig.state.getDisks('db').map((x) => x.changeId), before, 'its changeIds are recorded');
    assert.equal(await imageSha(rx, 'db', c!.imageId!, 0, d.capacity), expected);
    assert.equal((await rig.vc.snapshots(vm.moref)).snapshots.length, 0, 'no snapshot left');
  }
});
