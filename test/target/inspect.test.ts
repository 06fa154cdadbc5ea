/**
 * `vmlift image inspect` on real images: the lab's Debian guest synced by a job (full cycle, then
 * a guest file write and an incremental cycle), a zeroed disk, and an image that does not exist.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { readdir, readFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { startRig, settings, MiB } from '../engine/harness.ts';
import { openImageStore } from '../../src/store/index.ts';
import { guestfsEnv } from '../../lab/guest.ts';
import type { InspectReport } from '../../src/target/inspect.ts';
import { storeDigest } from './helpers.ts';

const bin = fileURLToPath(new URL('../../bin/vmlift', import.meta.url));
const run = promisify(execFile);

function vmlift(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d: Buffer) => { out += d; });
    p.stderr.on('data', (d: Buffer) => { err += d; });
    p.on('error', reject);
    p.on('close', (code) => resolve({ code: code ?? -1, out, err }));
  });
}


test('inspect the lab guest synced by a job: Debian 12, no virtio in the initramfs, fstab /dev/sda1, verdict "needs conversion"; the image is untouched', async (t) => {
  const rig = await startRig({ guest: true });
  t.after(() => rig.close());
  const { lab, engine, rx } = rig;
  const vm = lab.vm('guest-debian');
  engine.createJob({ id: 'guest', vmRef: vm.moref, settings: settings({ compression: 0 }) });
  engine.start('guest');
  const t0 = Date.now();
  await engine.runNow('guest');
  const job = engine.getJob('guest');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  const [c1] = rig.state.listCycles('guest');
  t.diagnostic(`full cycle of the ${vm.disks[0]!.capacity / MiB} MiB guest disk: ${(Date.now() - t0) / 1000} s`);

  const dataDir = join(rx.dir, 'rx');
  const before = await storeDigest(join(dataDir, 'store'));
  const t1 = Date.now();
  const r = await vmlift('image', 'inspect', '--data-dir', dataDir, '--source', job.sourceId, '--image', c1!.imageId!, '--json');
  t.diagnostic(`inspect: ${(Date.now() - t1) / 1000} s`);
  assert.equal(r.code, 0, r.err);
  const rep = JSON.parse(r.out) as InspectReport & { seconds: number };
  assert.equal(rep.os?.type, 'linux');
  assert.equal(rep.os?.distro, 'debian');
  assert.match(rep.os!.version, /^12(\.\d+)?$/);
  assert.equal(rep.os?.arch, 'x86_64');
  assert.equal(rep.os?.hostname, 'guest-debian');
  assert.equal(rep.disks[0]!.partitionTable, 'msdos');
  assert.deepEqual(rep.filesystems.map((f) => [f.device, f.type, f.mountpoint]), [['/dev/sda1', 'ext4', '/']]);
  assert.ok(rep.filesystems[0]!.usedBytes! > 100 * MiB && rep.filesystems[0]!.usedBytes! < rep.filesystems[0]!.sizeBytes!);
  assert.equal(rep.kernels.length, 1);
  assert.match(rep.kernels[0]!.version, /-amd64$/);
  assert.deepEqual(rep.kernels[0]!.virtioInInitramfs, { virtio_blk: false, virtio_scsi: false, virtio_net: false });
  assert.deepEqual(rep.kernels[0]!.virtioAvailable, { virtio_blk: true, virtio_scsi: true, virtio_net: true });
  assert.equal(rep.bootloader?.type, 'extlinux');
  assert.deepEqual(rep.fstab.map((e) => [e.spec, e.mountpoint, e.resolves.kvm]), [['/dev/sda1', '/', false]]);
  assert.equal(rep.vmwareTools, true);
  assert.equal(rep.cloudInit, false);
  assert.equal(rep.targets.kvm.verdict, 'needs conversion');
  const codes = rep.targets.kvm.reasons.map((x) => x.code);
  for (const c of ['INITRAMFS_NO_VIRTIO', 'FSTAB_DEVICE', 'BOOT_ROOT_DEVICE', 'VMWARE_TOOLS']) assert.ok(codes.includes(c), `reason ${c} in ${codes}`);
  assert.ok(rep.targets.kvm.reasons.every((x) => x.fix.length > 0), 'each reason has a fix');
  assert.equal(await storeDigest(join(dataDir, 'store')), before, 'inspect changed nothing of the store');

  // A file the guest writes between cycles reaches the next image through CBT.
  await lab.guestWrite('guest-debian', '/var/lib/app/data', 'marker of cycle 2\n');
  engine.requestSync('guest');
  await engine.runNow('guest');
  const [c2] = rig.state.listCycles('guest');
  assert.equal(c2!.kind, 'incremental');
  assert.ok(c2!.changedBytes < 64 * MiB, `the file write changed ${c2!.changedBytes} B`);
  t.diagnostic(`guest-write of one file changed ${c2!.changedBytes} B of the disk`);
  const tmp = await mkdtemp(join(tmpdir(), 'vmlift-inspect-test-'));
  t.after(() => rm(tmp, { recursive: true, force: true }));
  const exp = await vmlift('image', 'export', '--data-dir', dataDir, '--source', job.sourceId, '--image', c2!.imageId!, '--output', join(tmp, 'c2.raw'));
  assert.equal(exp.code, 0, exp.err);
  const { stdout } = await run('virt-cat', ['--format=raw', '-a', join(tmp, 'c2.raw'), '/var/lib/app/data'], { env: guestfsEnv() });
  assert.equal(stdout, 'marker of cycle 2\n');
});

test('inspect a zeroed disk and an unknown filesystem: verdict "blocked: no operating system found", exit 4; a missing image: NOT_FOUND, exit 1', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-inspect-zero-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const dataDir = join(dir, 'data');
  const store = await openImageStore(join(dataDir, 'store'), { chunkSize: 1 << 20 });
  const cap = 64 * MiB;
  const w = await store.beginCycle({ sourceId: 'blank', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  for (let o = 0; o < cap; o += 4 * MiB) await w.writeExtent(0, o, 4 * MiB, null);
  await w.commit();

  let r = await vmlift('image', 'inspect', '--data-dir', dataDir, '--source', 'blank', '--image', '1');
  assert.equal(r.code, 4, r.err);
  assert.match(r.out, /os: none found/);
  assert.match(r.out, /kvm: blocked: no operating system found/);
  assert.match(r.out, /fix: sync the VM's boot disk/);

  // A partition table whose one partition holds no filesystem libguestfs knows.
  const junk = join(dir, 'junk.raw');
  await run('truncate', ['-s', '64M', junk]);
  await new Promise<void>((res, rej) => {
    const p = spawn('sfdisk', ['-q', junk], { stdio: ['pipe', 'ignore', 'inherit'] });
    p.on('close', (c) => (c === 0 ? res() : rej(new Error(`sfdisk exited ${c}`))));
    p.stdin.end('label: dos\nstart=2048, type=83\n');
  });
  const jw = await store.beginCycle({ sourceId: 'junk', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  const head = await readFile(junk);
  const noise = Buffer.alloc(4 * MiB, 0x5a);
  for (let o = 0; o < cap; o += 4 * MiB) await jw.writeExtent(0, o, 4 * MiB, o === 0 ? Buffer.concat([head.subarray(0, MiB), noise.subarray(MiB)]) : o < 16 * MiB ? noise : null);
  await jw.commit();
  r = await vmlift('image', 'inspect', '--data-dir', dataDir, '--source', 'junk', '--image', '1', '--json');
  assert.equal(r.code, 4, r.err);
  const jr = JSON.parse(r.out) as InspectReport;
  assert.equal(jr.os, null);
  assert.equal(jr.partitions.length, 1);
  assert.equal(jr.targets.kvm.verdict, 'blocked');
  assert.match(jr.targets.kvm.reasons[0]!.message, /no operating system found on \/dev\/sda1 \(unknown\); unknown filesystem on \/dev\/sda1/);

  r = await vmlift('image', 'inspect', '--data-dir', dataDir, '--source', 'blank', '--image', '7');
  assert.equal(r.code, 1);
  assert.match(r.err, /image 7 of source blank does not exist/);
  assert.match(r.err, /fix: list what exists with `vmlift image ls/);
  r = await vmlift('image', 'inspect', '--data-dir', dataDir, '--source', 'blank', '--image', '7', '--json');
  assert.equal(r.code, 1);
  assert.equal((JSON.parse(r.out) as { error: { code: string } }).error.code, 'NOT_FOUND');
});

/** Pids whose command line mentions `needle` (guestfish, its appliance's qemu). */
async function processesWith(needle: string): Promise<number[]> {
  const out: number[] = [];
  for (const p of await readdir('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    const cmd = await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '');
    if (cmd.includes(needle)) out.push(Number(p));
  }
  return out;
}

test('Ctrl-C during inspect leaves no guestfish, no appliance and no temporary export behind', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-inspect-int-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const dataDir = join(dir, 'data'), scratch = join(dir, 'tmp');
  await import('node:fs/promises').then((f) => f.mkdir(scratch));
  const store = await openImageStore(join(dataDir, 'store'), { chunkSize: 1 << 20 });
  const w = await store.beginCycle({ sourceId: 'blank', cycleId: 'c1', disks: [{ disk: 0, capacity: 16 * MiB }] });
  await w.writeExtent(0, 0, 16 * MiB, null);
  await w.commit();
  const p = spawn(bin, ['image', 'inspect', '--data-dir', dataDir, '--source', 'blank', '--image', '1'], { stdio: 'ignore', env: { ...process.env, TMPDIR: scratch } });
  const exited = new Promise<number | null>((r) => p.on('close', (code, sig) => r(code ?? (sig ? -1 : null))));
  const deadline = Date.now() + 60_000;
  while ((await processesWith(scratch)).length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  assert.ok((await processesWith(scratch)).length >= 2, 'guestfish and its appliance run');
  p.kill('SIGINT');
  await exited;
  for (let i = 0; i < 50 && (await processesWith(scratch)).length; i++) await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(await processesWith(scratch), [], 'no process left');
  // libguestfs' appliance cache (.guestfs-UID) and tsx's cache may stay; the handle's own folder and our export may not.
  assert.deepEqual((await readdir(scratch)).filter((n) => !/^(\.guestfs-\d+|tsx-\d+)$/.test(n)), [], 'no temporary export left');
});
