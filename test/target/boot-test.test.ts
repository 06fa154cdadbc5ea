/**
 * `vmlift image boot-test` on the lab's Debian guest synced by a job: as stored (a VMware guest:
 * its initramfs lacks virtio_blk, so on the KVM target's virtio disk it waits for its root device
 * and the test fails early with that console tail), and converted (by `vmlift image convert`): it
 * reaches the serial login prompt. Neither the store nor the
 * converted folder changes; no QEMU and no overlay is left.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startRig, settings } from '../engine/harness.ts';
import type { BootTestReport } from '../../src/target/boot-test.ts';
import { isPng, leftoverFiles, leftoverProcesses, storeDigest, vmlift } from './boot-helpers.ts';
import { sha256File } from './boot-helpers.ts';

test('boot-test the lab guest: unconverted fails early (initramfs waits for its root device on virtio: ROOT_NOT_FOUND, fix: convert); converted reaches the login prompt; store and converted folder untouched, nothing left', async (t) => {
  const rig = await startRig({ guest: true });
  t.after(() => rig.close());
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-boot-guest-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const scratch = join(dir, 'tmp');
  await mkdir(scratch);
  const { lab, engine, rx } = rig;
  engine.createJob({ id: 'guest', vmRef: lab.vm('guest-debian').moref, settings: settings({ compression: 0 }) });
  engine.start('guest');
  await engine.runNow('guest');
  const job = engine.getJob('guest');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  const imageId = rig.state.listCycles('guest')[0]!.imageId!;
  const dataDir = join(rx.dir, 'rx');
  const storeRoot = join(dataDir, 'store');
  const before = await storeDigest(storeRoot);
  const common = ['--data-dir', dataDir, '--source', job.sourceId, '--image', imageId, '--json'];

  // As stored: virtio disk and NIC, as the KVM target runs it.
  let t0 = Date.now();
  let r = await vmlift(['image', 'boot-test', ...common, '--timeout', '300', '--report-dir', join(dir, 'r-unconverted')], { TMPDIR: scratch }).done;
  t.diagnostic(`unconverted: exit ${r.code} after ${(Date.now() - t0) / 1000} s`);
  assert.equal(r.code, 5, r.err);
  let rep = JSON.parse(r.out) as BootTestReport;
  t.diagnostic(`unconverted: ${rep.accel} (${rep.accelReason}), ${rep.seconds} s, QEMU peak RSS ${rep.qemuPeakRssMiB} MiB, ${rep.failure?.code}: ${rep.failure?.message}`);
  assert.equal(rep.passed, false);
  assert.equal(rep.failure?.code, 'ROOT_NOT_FOUND', JSON.stringify(rep.failure));
  assert.match(rep.failure!.fix, /initramfs lacks virtio_blk: run `vmlift image convert/);
  assert.match(rep.consoleTail.join('\n'), /Waiting for root file system|Gave up waiting for root/);
  assert.ok(rep.seconds < 300, 'failed before the timeout');
  assert.deepEqual(rep.disks.map((d) => d.bus), ['virtio']);
  assert.equal(rep.secondsToLogin, null);
  assert.ok(isPng(await readFile(rep.screenshot!)));
  assert.match(r.err, /vmlift: error: ROOT_NOT_FOUND: /);
  assert.deepEqual(await leftoverProcesses(scratch), []);
  assert.deepEqual(await leftoverFiles(scratch), []);

  // Converted by `vmlift image convert` (virt-v2v-in-place), outside the scratch folder.
  const conv = join(dir, 'converted');
  const tc = Date.now();
  const made = await vmlift(['image', 'convert', '--data-dir', dataDir, '--source', job.sourceId, '--image', imageId, '--to', 'kvm', '--output', conv, '--json']).done;
  assert.equal(made.code, 0, made.err);
  t.diagnostic(`converted folder: ${(Date.now() - tc) / 1000} s`);
  const convBefore = [await sha256File(join(conv, 'disk-0.qcow2')), await readFile(join(conv, 'convert.json'), 'utf8')];

  // A folder of another image is refused before anything boots.
  const other = join(dir, 'other');
  await mkdir(other);
  await writeFile(join(other, 'convert.json'), (await readFile(join(conv, 'convert.json'), 'utf8')).replace(`"imageId": "${imageId}"`, '"imageId": "999"'));
  r = await vmlift(['image', 'boot-test', ...common, '--converted', other], { TMPDIR: scratch }).done;
  assert.equal(r.code, 1);
  assert.equal((JSON.parse(r.out) as { error: { code: string } }).error.code, 'CONVERTED_MISMATCH');

  t0 = Date.now();
  // TCG: the unconverted run above took the probe (and, where KVM stops this guest, the fallback).
  r = await vmlift(['image', 'boot-test', ...common, '--converted', conv, '--accel', 'tcg', '--timeout', '420', '--report-dir', join(dir, 'r-converted')], { TMPDIR: scratch }).done;
  t.diagnostic(`converted: exit ${r.code} after ${(Date.now() - t0) / 1000} s`);
  assert.equal(r.code, 0, `${r.err}\n${r.out}`);
  rep = JSON.parse(r.out) as BootTestReport;
  t.diagnostic(`converted: ${rep.accel}, login after ${rep.secondsToLogin} s (multi-user ${rep.secondsToMultiUser} s), QEMU peak RSS ${rep.qemuPeakRssMiB} MiB, screenshot ${rep.screenshot}`);
  assert.equal(rep.passed, true);
  assert.equal(rep.reached, 'login');
  assert.ok(rep.secondsToLogin! > 0 && rep.secondsToLogin! <= rep.seconds);
  assert.match(rep.consoleTail.join('\n'), /guest-debian login:/);
  assert.equal(rep.failure, undefined);
  const manifest = JSON.parse(await readFile(join(conv, 'convert.json'), 'utf8')) as { cpus: number; memoryMiB: number };
  assert.deepEqual([rep.cpus, rep.memoryMiB], [manifest.cpus, manifest.memoryMiB], "the manifest's CPUs and memory");
  assert.deepEqual([manifest.cpus, manifest.memoryMiB], [2, 2048], 'the lab guest VM\'s CPUs and memory, from vCenter');
  assert.ok(isPng(await readFile(rep.screenshot!)));
  assert.deepEqual([await sha256File(join(conv, 'disk-0.qcow2')), await readFile(join(conv, 'convert.json'), 'utf8')], convBefore, 'the converted folder is only read');
  assert.deepEqual(await leftoverProcesses(scratch), []);
  assert.deepEqual(await leftoverFiles(scratch), []);

  assert.equal(await storeDigest(storeRoot), before, 'nothing of the stored images changed');
});
