/** The KVM verdict from inspection facts: each finding moves it, so "ready" and "blocked" are reachable too. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { kvmVerdict, resolveSpec, type InspectReport, type KernelInfo } from '../../src/target/inspect.ts';

const fs = [{ device: '/dev/sda1', type: 'ext4', label: 'root', uuid: 'f229bde3-42d3-4b7b-bb59-2f30772f7657', mountpoint: '/', sizeBytes: 1, usedBytes: 1 }];
const kernel = (inInitrd: boolean, available = true): KernelInfo => ({ version: '6.1.0-50-amd64', initramfs: '/boot/initrd.img-6.1.0-50-amd64',
  virtioInInitramfs: { virtio_blk: inInitrd, virtio_scsi: inInitrd, virtio_net: inInitrd },
  virtioAvailable: { virtio_blk: available, virtio_scsi: available, virtio_net: available } });

function report(patch: Partial<InspectReport> = {}): InspectReport {
  return {
    disks: [{ disk: 0, device: '/dev/sda', partitionTable: 'msdos', sizeBytes: 2 << 30 }],
    partitions: [{ device: '/dev/sda1', disk: 0, number: 1, start: 1 << 20, size: (2 << 30) - (1 << 20) }],
    filesystems: fs,
    os: { root: '/dev/sda1', type: 'linux', distro: 'debian', product: '12.15', version: '12.15', arch: 'x86_64', hostname: 'g' },
    kernels: [kernel(true)],
    bootloader: { type: 'grub2', config: '/boot/grub/grub.cfg', rootParams: ['UUID=f229bde3-42d3-4b7b-bb59-2f30772f7657'] },
    fstab: [{ spec: 'UUID=f229bde3-42d3-4b7b-bb59-2f30772f7657', mountpoint: '/', type: 'ext4', options: 'defaults', resolves: { kvm: true } }],
    vmwareTools: false, cloudInit: true, targets: { kvm: { verdict: 'blocked', reasons: [] } }, ...patch,
  };
}
const codes = (r: InspectReport) => kvmVerdict(r, 1).reasons.map((x) => x.code);

test('a guest with virtio in its initramfs and UUID names is ready for KVM', () => {
  assert.deepEqual(kvmVerdict(report(), 1), { verdict: 'ready', reasons: [] });
});

test('each VMware-ism asks for conversion, with a fix', () => {
  const r = report({ kernels: [kernel(false)], vmwareTools: true, bootloader: { type: 'extlinux', config: '/boot/extlinux/extlinux.conf', rootParams: ['/dev/sda1'] },
    fstab: [{ spec: '/dev/sda1', mountpoint: '/', type: 'ext4', options: 'defaults', ...resolveSpec('/dev/sda1', 'defaults', fs) }] });
  const v = kvmVerdict(r, 1);
  assert.equal(v.verdict, 'needs conversion');
  assert.deepEqual(v.reasons.map((x) => x.code), ['INITRAMFS_NO_VIRTIO', 'FSTAB_DEVICE', 'BOOT_ROOT_DEVICE', 'VMWARE_TOOLS']);
  assert.ok(v.reasons.every((x) => x.fix.includes('vmlift image convert')));
});

test('blocked: no OS, a kernel without virtio, an OS vmlift does not handle; Windows needs virtio-win', () => {
  assert.equal(kvmVerdict(report({ os: null, filesystems: [], partitions: [] }), 0).reasons[0]!.message, 'no operating system found: the image holds no filesystem and no partition table');
  assert.deepEqual(codes(report({ kernels: [kernel(false, false)] })), ['KERNEL_NO_VIRTIO', 'KERNEL_NO_VIRTIO_NET']);
  assert.equal(kvmVerdict(report({ kernels: [kernel(false, false)] }), 1).verdict, 'blocked');
  assert.equal(kvmVerdict(report({ kernels: [] }), 1).verdict, 'blocked');
  assert.equal(kvmVerdict(report({ os: { ...report().os!, type: 'freebsd' } }), 1).verdict, 'blocked');
  const win = kvmVerdict(report({ os: { ...report().os!, type: 'windows', product: 'Windows Server 2019' } }), 1);
  assert.equal(win.verdict, 'needs conversion');
  assert.match(win.reasons[0]!.fix, /virtio-win/);
});

test('fstab names: /dev/sdX and /dev/xvdX do not resolve on virtio-blk; UUID= must name a filesystem of the image; nofail entries may be missing', () => {
  assert.equal(resolveSpec('/dev/sda1', 'defaults', fs).resolves.kvm, false);
  assert.equal(resolveSpec('/dev/xvdb', 'defaults', fs).resolves.kvm, false);
  assert.equal(resolveSpec('/dev/sdb1', 'defaults,nofail', fs).resolves.kvm, true);
  assert.equal(resolveSpec('/dev/vda1', 'defaults', fs).resolves.kvm, true);
  assert.equal(resolveSpec('UUID=F229BDE3-42D3-4B7B-BB59-2F30772F7657', '', fs).resolves.kvm, true);
  assert.equal(resolveSpec('UUID=0000', '', fs).resolves.kvm, false);
  assert.equal(resolveSpec('LABEL=root', '', fs).resolves.kvm, true);
  assert.equal(resolveSpec('/dev/mapper/vg-root', '', fs).resolves.kvm, true);
  assert.equal(resolveSpec('tmpfs', '', fs).resolves.kvm, true);
});
