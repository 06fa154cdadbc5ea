import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRig, settings, liveSha, imageSha, guestWrites, MiB, type EngineRig } from './harness.ts';
import { reconfigDisks } from '../vsphere/device-change.ts';

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

const KiB = 1024;
/** What the lab writes on a new disk (docs/lab.md: the first MiB, 256 KiB in the middle, the last 64 KiB). */
const NEW_DISK_DATA = MiB + 256 * KiB + 64 * KiB;

test('disks are tracked by identity: a removed disk is dropped, a moved disk keeps its own base, a new or replaced disk alone is read in full', async (t) => {
  const rig = await startRig();
  t.after(() => rig.close());
  const { lab, engine } = rig;
  const vm = lab.vm('two-disks'); // 2000 on SCSI bus 0, 2016 on bus 1
  await lab.addDisk(vm.name, 2001, 16 * MiB); // a third disk, in the middle of the key order
  const writeAll = async (n: number) => {
    let bytes = 0;
    for (const d of lab.vm(vm.name).disks) bytes += await guestWrites(lab, vm.name, d.key, d.capacity, n);
    return bytes;
  };
  await writeAll(20);
  engine.createJob({ id: 'three', vmRef: vm.moref, settings: settings({ maxImages: 10 }) });
  engine.start('three');

  const one = await cycleMatchesSnapshot(rig, 'three', vm.name);
  assert.equal(one.cycle.kind, 'full');
  assert.deepEqual((one.image.meta.diskIdentities as { key: number }[]).map((x) => x.key), [2000, 2001, 2016]);
  assert.ok((one.image.meta.diskIdentities as { uuid: string | null }[]).every((x) => typeof x.uuid === 'string' && x.uuid.length > 0), 'backing UUIDs recorded');

  // The middle disk goes: 2016 moves to position 1 and keeps its own base and changeId (not 2001's).
  await lab.removeDisk(vm.name, 2001);
  let written = await writeAll(6);
  const two = await cycleMatchesSnapshot(rig, 'three', vm.name);
  assert.equal(two.cycle.kind, 'incremental', two.cycle.reason ?? '');
  assert.equal(two.image.baseImageId, one.image.imageId);
  assert.equal(two.image.disks.length, 2, 'the removed disk is dropped from the image');
  assert.ok(two.cycle.sourceBytesRead <= written, `read ${two.cycle.sourceBytesRead} <= written ${written}`);

  // A new disk in the middle: it alone is read in full; the others stay incremental on their own bases.
  await lab.addDisk(vm.name, 2001, 8 * MiB);
  written = await writeAll(4);
  const three = await cycleMatchesSnapshot(rig, 'three', vm.name);
  assert.equal(three.cycle.kind, 'full');
  assert.match(three.cycle.reason ?? '', /^disk 2001: new disk, not in image \d+ \(disks changed: .*disk 2001 \(.*\) added/);
  assert.doesNotMatch(three.cycle.reason ?? '', /disk 20(00|16):/, 'only the new disk is read in full');
  assert.equal(three.image.baseImageId, two.image.imageId);
  assert.ok(three.cycle.sourceBytesRead <= NEW_DISK_DATA + written, `read ${three.cycle.sourceBytesRead} <= new disk ${NEW_DISK_DATA} + written ${written}`);

  // The same key, another disk (new backing UUID): keys alone would match, identities do not.
  await lab.removeDisk(vm.name, 2001);
  await lab.addDisk(vm.name, 2001, 8 * MiB);
  written = await writeAll(4);
  const four = await cycleMatchesSnapshot(rig, 'three', vm.name);
  assert.equal(four.cycle.kind, 'full');
  assert.match(four.cycle.reason ?? '', /^disk 2001: new disk, .*disk 2001 \(.*\) removed.*disk 2001 \(.*\) added/);
  assert.doesNotMatch(four.cycle.reason ?? '', /disk 20(00|16):/);
  assert.ok(four.cycle.sourceBytesRead <= NEW_DISK_DATA + written, `read ${four.cycle.sourceBytesRead} <= new disk ${NEW_DISK_DATA} + written ${written}`);

  // Reordered through ReconfigVM_Task (deviceChange edit): disk 2001 moves from scsi0:1 to scsi0:2.
  // Same key and backing UUID, so it keeps its own base and changeId (its ctkEnabled moves with its slot).
  const uuidBefore = (four.image.meta.diskIdentities as { key: number; uuid: string }[]).find((x) => x.key === 2001)!.uuid;
  await reconfigDisks(rig.vc, vm.moref, [{ op: 'move', key: 2001, controllerKey: 1000, unitNumber: 2 }]);
  assert.deepEqual((await lab.refreshDisks(vm.name)).map((d) => [d.key, d.bus, d.unit]), [[2000, 0, 0], [2001, 0, 2], [2016, 1, 0]]);
  assert.equal((await rig.vc.vm(vm.moref)).disks.find((d) => d.key === 2001)!.busId, 'scsi0:2');
  written = await writeAll(4);
  const moved = await cycleMatchesSnapshot(rig, 'three', vm.name);
  assert.equal(moved.image.baseImageId, four.image.imageId);
  assert.equal((moved.image.meta.diskIdentities as { key: number; uuid: string }[]).find((x) => x.key === 2001)!.uuid, uuidBefore, 'the moved disk is the same disk');
  assert.equal(moved.cycle.kind, 'incremental', moved.cycle.reason ?? '');
  assert.ok(moved.cycle.sourceBytesRead <= written, `read ${moved.cycle.sourceBytesRead} <= written ${written}`);

  // And back to steady incrementals.
  written = await writeAll(3);
  const five = await cycleMatchesSnapshot(rig, 'three', vm.name);
  assert.equal(five.cycle.kind, 'incremental');
  assert.ok(five.cycle.sourceBytesRead <= written);
  assert.equal((await rig.vc.snapshots(vm.moref)).snapshots.length, 0, 'no snapshot left on the VM');
});
