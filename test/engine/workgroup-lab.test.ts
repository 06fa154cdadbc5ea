import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startRig, settings, liveSha, imageSha, guestWrites } from './harness.ts';
import { Workgroups } from '../../src/engine/workgroups.ts';
import { Scheduler } from '../../src/engine/scheduler.ts';
import { silentLogger } from '../../src/util/log.ts';

test('a workgroup of 50 lab VMs completes a full and an incremental cycle; a 51st source and bad actions are listed with reasons', async (t) => {
  const rig = await startRig({ vms: 50, diskMb: 8 });
  t.after(() => rig.close());
  const { lab, engine, rx } = rig;
  const vms = lab.vms.filter((v) => /^vm-\d+$/.test(v.name));
  assert.equal(vms.length, 50);
  const wg = new Workgroups(engine);
  wg.create('wave-1', 'Wave-1'); // display names hold no spaces (SMC's rules, engine/names.ts)
  for (const vm of vms) {
    await guestWrites(lab, vm.name, vm.disks[0]!.key, vm.disks[0]!.capacity, 4);
    engine.createJob({ id: vm.name, vmRef: vm.moref, settings: settings({ compression: 1 }) });
  }
  const added = wg.add('wave-1', vms.map((v) => v.name));
  assert.ok(added.every((m) => m.ok));
  engine.createJob({ id: 'two-disks', vmRef: lab.vm('two-disks').moref, settings: settings() });
  const [extra] = wg.add('wave-1', ['two-disks']);
  assert.equal(extra!.ok, false);
  assert.match(extra!.reason!, /already holds 50 sources/);

  const scheduler = new Scheduler(engine, { logger: silentLogger, tickMs: 100 });
  const runAll = async (what: string) => {
    scheduler.start();
    const end = Date.now() + 240_000;
    while (Date.now() < end) {
      const states = wg.status('wave-1').members.map((m) => m.state);
      if (states.every((s) => s === 'waiting' || s === 'error') && !vms.some((v) => engine.isRunning(v.name))) break;
      await sleep(200);
    }
    await scheduler.stop();
    const bad = wg.status('wave-1').members.filter((m) => m.state !== 'waiting');
    assert.deepEqual(bad, [], `${what}: every source reached waiting`);
  };

  const started = wg.batch('wave-1', 'start');
  assert.ok(started.every((m) => m.ok && m.state === 'syncing'));
  const expected1 = await Promise.all(vms.map((v) => liveSha(lab, v.name, v.disks[0]!.key, v.disks[0]!.capacity)));
  await runAll('full cycle');

  // Sync of a source that is not waiting is listed with the reason; the others go on.
  for (const vm of vms) await guestWrites(lab, vm.name, vm.disks[0]!.key, vm.disks[0]!.capacity, 1);
  engine.pause(vms[0]!.name);
  const synced = wg.batch('wave-1', 'sync');
  assert.equal(synced.filter((m) => !m.ok).length, 1);
  assert.match(synced.find((m) => !m.ok)!.reason!, /is paused/);
  engine.resume(vms[0]!.name);
  engine.requestSync(vms[0]!.name);
  const expected2 = await Promise.all(vms.map((v) => liveSha(lab, v.name, v.disks[0]!.key, v.disks[0]!.capacity)));
  await runAll('incremental cycle');

  for (const [i, vm] of vms.entries()) {
    const cycles = rig.state.listCycles(vm.name);
    assert.deepEqual(cycles.map((c) => `${c.kind}:${c.state}`), ['incremental:committed', 'full:committed'], vm.name);
    assert.equal(await imageSha(rx, vm.name, cycles[1]!.imageId!, 0, vm.disks[0]!.capacity), expected1[i], `${vm.name} image 1`);
    assert.equal(await imageSha(rx, vm.name, cycles[0]!.imageId!, 0, vm.disks[0]!.capacity), expected2[i], `${vm.name} image 2`);
    assert.ok(cycles[0]!.sourceBytesRead <= 64 * 1024 * 2, `${vm.name}: the incremental read only the changed block(s)`);
  }
  const completed = wg.batch('wave-1', 'complete');
  assert.ok(completed.every((m) => m.ok && m.state === 'completing'));
});
