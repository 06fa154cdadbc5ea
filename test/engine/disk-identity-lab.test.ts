import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRig, settings, liveSha, imageSha, guestWrites, MiB, type EngineRig } from './harness.ts';

/** Runs one cycle of the job; every disk of its image must be its snapshot's disk, bit for bit. */
async function cycleMatchesSnapshot(rig: EngineRig, jobId: string, vmName: string) {
  const { lab, engine, rx } = rig;
  const disks = lab.vm(vmName).disks;
  const expected = await Promise.all(disks.map((d) => liveSha(lab, vmName, d.key, d.capacity)));
  engine.requestSync(jobId);
  await engine.runNow(jobId);
  const job = engine.getJob(jobId);
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  const [c] = rig.state.listCycles(jobId);
  assert.equal(c!.state, 'committed');
  const image = (await rx.rx.store.listImages(job.sourceId)).find((i) => i.imageId === c!.imageId)!;
  assert.deepEqual(image.disks.map((d) => d.capacity), disks.map((d) => d.capacity), 'the image has the VM\'s disks, in key order');
  for (const [i, d] of disks.entries()) {
    assert.equal(await imageSha(rx, job.sourceId, c!.imageId!, i, d.capacity), expected[i], `disk ${d.key} (position ${i}) of image ${c!.imageId}`);
  }
  return { cycle: c!, image };
}

test('disks are tracked by identity: removing, adding or replacing a disk never applies changes onto another disk\'s base', async (t) => {
  const rig = await startRig();
  t.after(() => rig.close());
  const { lab, engine } = rig;
  const vm = lab.vm('two-disks'); // 2000 on SCSI bus 0, 2016 on bus 1
  await lab.addDisk(vm.name, 2001, 16 * MiB); // a third disk, in the middle of the key order
  const writeAll = async (n: number) => { for (const d of lab.vm(vm.name).disks) await guestWrites(lab, vm.name, d.key, d.capacity, n); };
  await writeAll(20);
  engine.createJob({ id: 'three', vmRef: vm.moref, settings: settings({ maxImages: 10 }) });
  engine.start('three');

  const one = await cycleMatchesSnapshot(rig, 'three', vm.name);
  assert.equal(one.cycle.kind, 'full');
  assert.deepEqual((one.image.meta.diskIdentities as { key: number }[]).map((x) => x.key), [2000, 2001, 2016]);
  assert.ok((one.image.meta.diskIdentities as { uuid: string | null }[]).every((x) => typeof x.uuid === 'string' && x.uuid.length > 0), 'backing UUIDs recorded');

  // The middle disk goes: 2016 moves to position 1 and keeps its changeId, but its changes
  // belong on its own base, not on 2001's.
  await lab.removeDisk(vm.name, 2001);
  await writeAll(6);
  const two = await cycleMatchesSnapshot(rig, 'three', vm.name);
  assert.equal(two.cycle.kind, 'full');
  assert.match(two.cycle.reason ?? '', /disks changed: .*disk 2001 \(.*\) removed/);
  assert.equal(two.image.baseImageId, null, 'built from empty disks, not on the previous image by position');

  // Unchanged disks: incremental again.
  await writeAll(4);
  const steady = await cycleMatchesSnapshot(rig, 'three', vm.name);
  assert.equal(steady.cycle.kind, 'incremental');

  // A new disk in the middle.
  await lab.addDisk(vm.name, 2001, 8 * MiB);
  await writeAll(4);
  const three = await cycleMatchesSnapshot(rig, 'three', vm.name);
  assert.equal(three.cycle.kind, 'full');
  assert.match(three.cycle.reason ?? '', /disk 2001 \(.*\) added/);

  // The same key, another disk (new backing UUID): keys alone would match, identities do not.
  await lab.removeDisk(vm.name, 2001);
  await lab.addDisk(vm.name, 2001, 8 * MiB);
  await writeAll(4);
  const four = await cycleMatchesSnapshot(rig, 'three', vm.name);
  assert.equal(four.cycle.kind, 'full');
  assert.match(four.cycle.reason ?? '', /disk 2001 \(.*\) removed.*disk 2001 \(.*\) added/);
  assert.equal((await rig.vc.snapshots(vm.moref)).snapshots.length, 0, 'no snapshot left on the VM');
});
