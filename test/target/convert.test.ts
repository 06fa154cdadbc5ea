/**
 * `vmlift image convert --to kvm` on real images: the lab's Debian guest synced by a job (one
 * virt-v2v-in-place run under TCG: minutes), then the bad inputs (an image id that does not exist, a
 * disk with an ext4 filesystem and no OS, PATH without virt-v2v), each a clear error, a non-zero exit,
 * no output folder, no temporary files, no process left.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import { startRig, settings, MiB } from '../engine/harness.ts';
import { openImageStore } from '../../src/store/index.ts';
import { guestfsEnv } from '../../lab/guest.ts';
import type { ConvertManifest } from '../../src/target/convert-manifest.ts';
import { readConvertManifest } from '../../src/target/convert-manifest.ts';
import { qemuArgs } from '../../src/target/qemu-cmdline.ts';
import { processesWith, rssSampler, storeDigest, vmlift } from './helpers.ts';

const run = promisify(execFile);

/** Nothing of a convert is left: no output folder, no DIR.tmp-*, nothing in the TMPDIR it ran with but caches, no process naming either. */
async function nothingLeft(parent: string, scratch: string): Promise<void> {
  assert.deepEqual((await readdir(parent)).filter((n) => n.startsWith('out')), [], 'no output folder and no DIR.tmp-*');
  assert.deepEqual((await readdir(scratch)).filter((n) => !/^(\.guestfs-\d+|tsx-\d+)$/.test(n)), [], 'no temporary files');
  for (let i = 0; i < 50 && (processesWith(scratch).length || processesWith(parent).length); i++) await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual([...processesWith(scratch), ...processesWith(parent)], [], 'no process left');
}

test('convert the lab guest synced by a job: standalone virtio qcow2, domain XML, qemu.sh, convert.json from vCenter hardware; ready for KVM; the store is untouched', async (t) => {
  const rig = await startRig({ guest: true });
  t.after(() => rig.close());
  const { lab, engine, rx } = rig;
  const vm = lab.vm('guest-debian');
  engine.createJob({ id: 'guest', vmRef: vm.moref, settings: settings({ compression: 0 }) });
  engine.start('guest');
  await engine.runNow('guest');
  const job = engine.getJob('guest');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  const [c1] = rig.state.listCycles('guest');
  const dataDir = join(rx.dir, 'rx');
  const store = await openImageStore(join(dataDir, 'store'));
  const img = await store.getImage(job.sourceId, c1!.imageId!);
  await store.close();
  assert.deepEqual(img.meta.vm, { cpus: 2, memoryMiB: 2048, firmware: 'bios', guestId: 'debian12_64Guest' }, 'the commit recorded the VM hardware from vCenter');

  const work = await mkdtemp(join(tmpdir(), 'vmlift-convert-test-'));
  t.after(() => rm(work, { recursive: true, force: true }));
  const scratch = join(work, 'tmp');
  await mkdir(scratch);
  const out = join(work, 'out');
  const before = await storeDigest(join(dataDir, 'store'));
  let pid = 0;
  const stop = rssSampler(() => pid, scratch);
  const t0 = Date.now();
  const r = await vmlift(['image', 'convert', '--data-dir', dataDir, '--source', job.sourceId, '--image', c1!.imageId!, '--to', 'kvm', '--output', out, '--json'],
    { ...process.env, TMPDIR: scratch }, (p) => { pid = p; });
  const wall = (Date.now() - t0) / 1000;
  const rss = stop();
  t.diagnostic(`convert of the ${vm.disks[0]!.capacity / MiB} MiB guest: ${wall.toFixed(1)} s wall, peak RSS ${rss.peakMiB} MiB in all (vmlift ${rss.peakVmliftMiB} MiB)`);
  assert.equal(r.code, 0, r.err + r.out);
  const m = JSON.parse(r.out) as ConvertManifest;
  t.diagnostic(`virt-v2v-in-place ${m.v2v.version}: ${m.v2v.seconds.toFixed(1)} s; prepared: ${m.prepared.join(' | ')}`);

  assert.deepEqual((await readdir(out)).sort(), ['convert.json', 'disk-0.qcow2', 'domain.xml', 'qemu.sh']);
  assert.deepEqual((await readdir(work)).sort(), ['out', 'tmp'], 'no DIR.tmp-* left');
  const onDisk = await readConvertManifest(out);
  assert.deepEqual(onDisk, (({ output: _o, ...rest }) => rest)(m as ConvertManifest & { output: string }));
  assert.equal(m.format, 1);
  assert.equal(m.sourceId, job.sourceId);
  assert.equal(m.imageId, c1!.imageId);
  assert.equal(m.target, 'kvm');
  assert.deepEqual(m.disks, [{ disk: 0, file: 'disk-0.qcow2', bus: 'virtio', sizeBytes: vm.disks[0]!.capacity }]);
  assert.deepEqual([m.cpus, m.memoryMiB, m.from, m.firmware, m.nic], [2, 2048, 'vcenter', 'bios', 'virtio-net-pci']);
  assert.equal(m.os.type, 'linux');
  assert.equal(m.os.distro, 'debian');
  assert.match(m.os.version, /^12/);
  assert.equal(m.os.hostname, 'guest-debian');
  assert.equal(m.v2v.tool, 'virt-v2v-in-place');
  assert.match(m.v2v.version, /^2\.\d+/);
  assert.ok(m.v2v.seconds > 0 && Number.isFinite(Date.parse(m.createdAt)));
  assert.equal(m.check.verdict, 'ready', `convert's own check: ${m.check.reasons.join(', ')}`);

  const qi = JSON.parse((await run('qemu-img', ['info', '--output=json', join(out, 'disk-0.qcow2')])).stdout) as Record<string, unknown>;
  assert.equal(qi.format, 'qcow2');
  assert.equal(qi['backing-filename'], undefined, 'standalone: no backing file');
  assert.equal(qi['virtual-size'], vm.disks[0]!.capacity);
  const xml = await readFile(join(out, 'domain.xml'), 'utf8');
  assert.match(xml, new RegExp(`<source file='${join(out, 'disk-0.qcow2')}'/>\\s*<target dev='vda' bus='virtio'/>`));
  assert.match(xml, /<model type='virtio'\/>/);
  assert.match(xml, /<vcpu placement='static'>2<\/vcpu>/);
  assert.match(xml, /<memory unit='MiB'>2048<\/memory>/);
  const sh = await readFile(join(out, 'qemu.sh'), 'utf8');
  assert.ok(((await stat(join(out, 'qemu.sh'))).mode & 0o111) !== 0, 'qemu.sh is executable');
  assert.match(sh, /virtio-blk-pci,drive=disk0,bootindex=1/);
  assert.match(sh, /virtio-net-pci,netdev=net0/);
  assert.match(sh, /-smp 2 .*-m 2048M|-smp 2[\s\S]*-m 2048M/);
  await run('sh', ['-n', join(out, 'qemu.sh')]);
  assert.deepEqual(qemuArgs(m, { diskFiles: ['/x/d0.qcow2'], network: 'none', accel: 'tcg', serial: 'none' }).filter((a) => /virtio|file=/.test(a)),
    ['file=/x/d0.qcow2,format=qcow2,if=none,id=disk0', 'virtio-blk-pci,drive=disk0,bootindex=1']);

  // An independent read of the converted disk with libguestfs: what a KVM boot needs is there.
  const initrd = join(work, 'initrd.img');
  const g = spawn('guestfish', ['--ro', '--format=qcow2', '-a', join(out, 'disk-0.qcow2'), '-i'], { env: { ...guestfsEnv(), TMPDIR: scratch }, stdio: ['pipe', 'pipe', 'pipe'] });
  let gout = '', gerr = '';
  g.stdout.on('data', (d: Buffer) => { gout += d; });
  g.stderr.on('data', (d: Buffer) => { gerr += d; });
  g.stdin.end(`cat /etc/fstab\necho ----\ncat /boot/extlinux/extlinux.conf\necho ----\nvfs-uuid /dev/sda1\nexists /boot/grub/menu.lst\nexists /usr/bin/vmtoolsd\n` +
    `glob download /boot/initrd.img-*-amd64 ${initrd}\n`);
  const gcode = await new Promise<number>((res) => g.on('close', (c) => res(c ?? -1)));
  assert.equal(gcode, 0, gerr);
  const [fstab, extlinux, facts] = gout.split('----\n') as [string, string, string];
  assert.match(fstab, /^\/dev\/vda1\s+\/\s+ext4/m, 'fstab names the virtio disk');
  assert.doesNotMatch(fstab, /^\/dev\/sd/m);
  const [uuid, menuLst, vmtoolsd] = facts.trim().split('\n');
  assert.match(extlinux, new RegExp(`APPEND root=UUID=${uuid} `), 'extlinux passes the root filesystem by UUID');
  assert.deepEqual([menuLst, vmtoolsd], ['false', 'false'], 'no menu.lst shim left; VMware Tools removed');
  const listed = (await run('lsinitramfs', [initrd], { maxBuffer: 256 << 20 })).stdout;
  for (const mod of ['virtio_blk', 'virtio_scsi', 'virtio_net', 'virtio_pci']) assert.match(listed, new RegExp(`/${mod}\\.ko`), `${mod} in the initramfs`);

  assert.equal(await storeDigest(join(dataDir, 'store')), before, 'convert changed nothing of the store');
  assert.deepEqual(await readdir(join(dataDir, 'store', 'sources', job.sourceId, 'pins')), [], 'the pin is released');
  assert.deepEqual(processesWith(scratch), [], 'no process left');
});

/** A store with one image whose disk holds an ext4 filesystem with a few files and no OS. */
async function noOsStore(dir: string): Promise<string> {
  const dataDir = join(dir, 'data');
  const store = await openImageStore(join(dataDir, 'store'), { chunkSize: 1 << 20 });
  const f = join(dir, 'plain.raw');
  await run('truncate', ['-s', '64M', f]);
  await run('mkfs.ext4', ['-q', '-F', '-L', 'data', f]);
  const bytes = await readFile(f);
  const w = await store.beginCycle({ sourceId: 'plain', cycleId: 'c1', disks: [{ disk: 0, capacity: bytes.length }] });
  for (let o = 0; o < bytes.length; o += 4 * MiB) {
    const piece = bytes.subarray(o, o + 4 * MiB);
    await w.writeExtent(0, o, piece.length, piece.some((b) => b !== 0) ? Buffer.from(piece) : null);
  }
  await w.commit();
  await store.close();
  await rm(f);
  return dataDir;
}

test('bad input: a missing image, an ext4 disk with no OS, PATH without virt-v2v; each a clear error, non-zero exit, nothing left', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-convert-bad-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const scratch = join(dir, 'tmp');
  const parent = join(dir, 'outputs');
  await mkdir(scratch);
  await mkdir(parent);
  const dataDir = await noOsStore(dir);
  const env = { ...process.env, TMPDIR: scratch };
  const before = await storeDigest(join(dataDir, 'store'));
  const args = (image: string) => ['image', 'convert', '--data-dir', dataDir, '--source', 'plain', '--image', image, '--to', 'kvm', '--output', join(parent, 'out')];

  let r = await vmlift(args('7'), env);
  assert.equal(r.code, 1);
  assert.match(r.err, /image 7 of source plain does not exist/);
  assert.match(r.err, /fix: list what exists with `vmlift image ls/);
  await nothingLeft(parent, scratch);

  r = await vmlift([...args('7'), '--json'], env);
  assert.equal(r.code, 1);
  assert.equal((JSON.parse(r.out) as { error: { code: string } }).error.code, 'NOT_FOUND');

  // PATH without virt-v2v-in-place: every other program is still there.
  const noV2v = join(dir, 'bin');
  await mkdir(noV2v);
  const seen = new Set<string>();
  for (const d of (process.env.PATH ?? '').split(delimiter)) {
    for (const n of await readdir(d).catch(() => [] as string[])) {
      if (seen.has(n) || n.startsWith('virt-v2v')) continue;
      seen.add(n);
      await symlink(join(d, n), join(noV2v, n)).catch(() => undefined);
    }
  }
  r = await vmlift([...args('1'), '--json'], { ...env, PATH: noV2v });
  assert.equal(r.code, 1, r.err);
  const e = (JSON.parse(r.out) as { error: { code: string; message: string; fix: string } }).error;
  assert.equal(e.code, 'V2V_MISSING');
  assert.match(e.message, /virt-v2v-in-place is not installed/);
  assert.match(e.fix, /Debian package virt-v2v \(apt-get install virt-v2v/);
  await nothingLeft(parent, scratch);

  // An ext4 filesystem and no OS: refused after inspection, exit 4.
  const t0 = Date.now();
  r = await vmlift(args('1'), env);
  t.diagnostic(`no-OS convert refused in ${(Date.now() - t0) / 1000} s`);
  assert.equal(r.code, 4, r.err);
  assert.match(r.err, /vmlift: error: cannot convert: no operating system found on \/dev\/sda \(ext4\)/);
  assert.match(r.err, /fix: sync the VM's boot disk/);
  await nothingLeft(parent, scratch);
  assert.deepEqual(await readdir(join(dataDir, 'store', 'sources', 'plain', 'pins')), [], 'the pin is released');
  assert.equal(await storeDigest(join(dataDir, 'store')), before, 'the store is unchanged');
});

test('Ctrl-C during convert ends every process it started and leaves no folder, no temporary file and no pin', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-convert-int-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const scratch = join(dir, 'tmp');
  const parent = join(dir, 'outputs');
  await mkdir(scratch);
  await mkdir(parent);
  const dataDir = await noOsStore(dir);
  const p = spawn(join(import.meta.dirname, '../../bin/vmlift'), ['image', 'convert', '--data-dir', dataDir, '--source', 'plain', '--image', '1', '--output', join(parent, 'out')],
    { stdio: 'ignore', env: { ...process.env, TMPDIR: scratch } });
  const exited = new Promise<number | null>((r) => p.on('close', (code, sig) => r(code ?? (sig ? -1 : null))));
  const deadline = Date.now() + 180_000;
  // guestfish and its appliance run over the overlay in DIR.tmp-*
  const building = join(parent, 'out.tmp-');
  while (processesWith(building).length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  assert.ok(processesWith(building).length >= 2, 'guestfish and its appliance run over the overlay');
  assert.equal((await readdir(join(dataDir, 'store', 'sources', 'plain', 'pins'))).length, 1, 'the image is pinned while it converts');
  const store = await openImageStore(join(dataDir, 'store'));
  await assert.rejects(store.removeImage('plain', '1'), (e: Error & { code?: string }) => e.code === 'PINNED');
  await store.close();
  p.kill('SIGINT');
  await exited;
  await nothingLeft(parent, scratch);
  assert.deepEqual(await readdir(join(dataDir, 'store', 'sources', 'plain', 'pins')), [], 'the pin is released');
});
