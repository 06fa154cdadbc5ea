/**
 * A `vmlift image convert --output DIR` folder for boot tests, made without vmlift's convert (built
 * elsewhere; the lead swaps this helper for it): the image's disk 0 exported raw, a qcow2 overlay
 * converted in place, then written as a standalone qcow2, and convert.json of the DIR contract.
 *
 * Debian's virt-v2v-in-place refuses the lab guest ("no bootloader detected": virt-v2v handles GRUB,
 * the lab guest boots with extlinux), so the overlay is converted with guestfish doing the steps
 * virt-v2v would for this guest: virtio drivers into the initramfs (the lab's no-virtio hook
 * removed, virtio_pci/virtio_blk/virtio_scsi/virtio_net listed, update-initramfs in the guest) and
 * the root device renamed /dev/sda1 -> /dev/vda1 in fstab and extlinux.conf. That takes minutes
 * under TCG, so the converted disk is cached per image content (or the caller's key) under $VMLIFT_CACHE
 * (like the lab guest itself); DIR/disk-0.qcow2 is a symlink to the cached file, which boot-test only reads.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { guestfsEnv } from '../../lab/guest.ts';

const run = promisify(execFile);

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const b of createReadStream(path, { highWaterMark: 8 << 20 })) h.update(b as Buffer);
  return h.digest('hex');
}

const CONVERT_SCRIPT = [
  'rm-f /etc/initramfs-tools/hooks/no-virtio',
  'write-append /etc/initramfs-tools/modules "virtio_pci\\nvirtio_blk\\nvirtio_scsi\\nvirtio_net\\n"',
  'command "sed -i s#/dev/sda1#/dev/vda1#g /etc/fstab /boot/extlinux/extlinux.conf"',
  'command "update-initramfs -u -k all"',
  'sh "lsinitramfs /boot/initrd.img-* | grep -q /virtio_blk.ko"',
].join('\n');

function guestfishScript(disk: string, script: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn('guestfish', ['--rw', '--format=qcow2', '-a', disk, '-i'], { env: guestfsEnv(), stdio: ['pipe', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => { err += d; });
    p.on('error', reject);
    p.on('close', (c) => (c === 0 ? resolve() : reject(new Error(`guestfish conversion failed (exit ${c}): ${err.slice(-2000)}`))));
    p.stdin.end(`${script}\n`);
  });
}

/**
 * Makes `dir` a converted folder for image `imageId` of `sourceId`, whose disk 0 the caller exported
 * to `raw` (sparse). Returns how long the conversion took (0 when it came from the cache).
 */
export async function makeConvertedDir(raw: string, sourceId: string, imageId: string, dir: string,
  opts: { cacheKey?: string } = {}): Promise<{ seconds: number; cached: boolean; disk: string }> {
  const t0 = Date.now();
  // The caller may name the content (e.g. the lab guest's build folder): hashing 2 GiB costs half a minute here.
  const key = opts.cacheKey ?? (await sha256File(raw)).slice(0, 16);
  const cacheDir = join(process.env.VMLIFT_CACHE ?? join(homedir(), '.cache', 'vmlift'), `converted-${key}-v1`);
  const cached = join(cacheDir, 'disk-0.qcow2');
  const hit = (await stat(cached).catch(() => null))?.isFile() ?? false;
  if (!hit) {
    await mkdir(cacheDir, { recursive: true });
    const work = join(cacheDir, `work-${process.pid}`);
    await mkdir(work, { recursive: true });
    try {
      const ov = join(work, 'overlay.qcow2');
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', raw, ov]);
      await guestfishScript(ov, CONVERT_SCRIPT);
      await run('qemu-img', ['convert', '-q', '-f', 'qcow2', '-O', 'qcow2', ov, join(work, 'disk-0.qcow2')]);
      await rename(join(work, 'disk-0.qcow2'), cached);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }
  const { stdout } = await run('qemu-img', ['info', '--output=json', cached]);
  const sizeBytes = (JSON.parse(stdout) as { 'virtual-size': number })['virtual-size'];
  await mkdir(dir, { recursive: true });
  await symlink(cached, join(dir, 'disk-0.qcow2'));
  await writeFile(join(dir, 'convert.json'), `${JSON.stringify({
    format: 1, sourceId, imageId, target: 'kvm',
    disks: [{ disk: 0, file: 'disk-0.qcow2', bus: 'virtio', sizeBytes }],
    cpus: 2, memoryMiB: 1024, firmware: 'bios', nic: 'virtio-net-pci',
    os: { type: 'linux', distro: 'debian' },
    v2v: { tool: 'test/target/converted-fixture.ts (guestfish)', note: 'virt-v2v-in-place: no bootloader detected (extlinux)' },
    createdAt: new Date().toISOString(),
  }, null, 2)}\n`);
  return { seconds: (Date.now() - t0) / 1000, cached: hit, disk: cached };
}
