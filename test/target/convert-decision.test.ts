/**
 * The parts of `image convert` decided from facts, without a guest: whether an inspected guest can be
 * converted (Windows needs virtio-win; no OS; other OSes), the VM hardware from the image meta, the
 * extlinux shim, and the qemu arguments boot-test shares. (No Windows image is made here: a disk
 * libguestfs inspects as Windows needs an NTFS filesystem with the registry hives, not cheap to build.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { conversionDecision, hardwareOf, macFor } from '../../src/target/convert.ts';
import { kvmVerdict, type InspectReport } from '../../src/target/inspect.ts';
import { menuLst, parseExtlinux, rootByUuid } from '../../src/target/prepare-linux.ts';
import { qemuArgs } from '../../src/target/qemu-cmdline.ts';
import { domainXml, driveName } from '../../src/target/domain-xml.ts';
import type { ConvertManifest } from '../../src/target/convert-manifest.ts';
import { CodedError } from '../../src/util/errors.ts';

const uuid = 'f229bde3-42d3-4b7b-bb59-2f30772f7657';
function report(patch: Partial<InspectReport> = {}): InspectReport {
  const r: InspectReport = {
    disks: [{ disk: 0, device: '/dev/sda', partitionTable: 'msdos', sizeBytes: 2 << 30 }],
    partitions: [{ device: '/dev/sda1', disk: 0, number: 1, start: 1 << 20, size: (2 << 30) - (1 << 20) }],
    filesystems: [{ device: '/dev/sda1', type: 'ext4', label: 'root', uuid, mountpoint: '/', sizeBytes: 1, usedBytes: 1 }],
    os: { root: '/dev/sda1', type: 'linux', distro: 'debian', product: '12.15', version: '12.15', arch: 'x86_64', hostname: 'g' },
    kernels: [], bootloader: null, fstab: [], vmwareTools: false, cloudInit: false, targets: { kvm: { verdict: 'blocked', reasons: [] } }, ...patch,
  };
  r.targets.kvm = kvmVerdict(r, r.os ? 1 : 0);
  return r;
}
const windows = () => report({ os: { root: '/dev/sda2', type: 'windows', distro: 'windows', product: 'Windows Server 2019 Standard', version: '10.0', arch: 'x86_64', hostname: 'w' } });

function refused(fn: () => unknown): CodedError {
  try { fn(); } catch (e) { assert.ok(e instanceof CodedError); return e; }
  assert.fail('not refused');
}

test('Windows without virtio-win is refused with a coded error naming virtio-win and the fix; with VIRTIO_WIN set and present it is passed on', () => {
  let e = refused(() => conversionDecision(windows(), {}));
  assert.equal(e.code, 'CONVERT_WINDOWS_VIRTIO');
  assert.equal(e.exitCode, 4);
  assert.match(e.message, /Windows Server 2019 Standard.*virtio-win drivers.*Debian does not ship them/);
  assert.match(e.fix!, /virtio-win ISO.*set VIRTIO_WIN/);
  e = refused(() => conversionDecision(windows(), { VIRTIO_WIN: '/nowhere/virtio-win.iso' }, () => false));
  assert.match(e.message, /VIRTIO_WIN=\/nowhere\/virtio-win.iso does not exist/);
  assert.deepEqual(conversionDecision(windows(), { VIRTIO_WIN: '/usr/share/virtio-win' }, (p) => p === '/usr/share/virtio-win'), { virtioWin: '/usr/share/virtio-win' });
});

test('no OS and other OSes are refused (exit 4); Linux goes on', () => {
  const none = report({ os: null, filesystems: [{ device: '/dev/sda', type: 'ext4', label: '', uuid: '', mountpoint: null, sizeBytes: null, usedBytes: null }], partitions: [] });
  let e = refused(() => conversionDecision(none, {}));
  assert.equal(e.code, 'CONVERT_NO_OS');
  assert.match(e.message, /no operating system found on \/dev\/sda \(ext4\)/);
  e = refused(() => conversionDecision(report({ os: { ...report().os!, type: 'freebsd' } }), {}));
  assert.equal(e.code, 'CONVERT_OS_UNSUPPORTED');
  assert.deepEqual(conversionDecision(report(), {}), { virtioWin: null });
});

test('the VM hardware comes from the image meta when vCenter gave it, else the defaults (2 CPUs, 2048 MiB), said so', () => {
  assert.deepEqual(hardwareOf({ vm: { cpus: 4, memoryMiB: 8192, firmware: 'uefi', guestId: 'x' } }, report()), { cpus: 4, memoryMiB: 8192, firmware: 'uefi', from: 'vcenter' });
  assert.deepEqual(hardwareOf({}, report()), { cpus: 2, memoryMiB: 2048, firmware: 'bios', from: 'default' });
  const efi = report({ fstab: [{ spec: 'UUID=AB-CD', mountpoint: '/boot/efi', type: 'vfat', options: 'umask=0077', resolves: { kvm: true } }] });
  assert.equal(hardwareOf({}, efi).firmware, 'uefi');
  assert.match(macFor('web01'), /^52:54:00(:[0-9a-f]{2}){3}$/);
  assert.equal(macFor('web01'), macFor('web01'));
});

test('extlinux entries become a GRUB-legacy shim for virt-v2v; root=/dev/sda1 becomes the UUID', () => {
  const cfg = 'DEFAULT debian\nTIMEOUT 1\nLABEL rescue\n  LINUX /boot/vmlinuz-old\nLABEL debian\n  LINUX /boot/vmlinuz-6.1.0-50-amd64\n  INITRD /boot/initrd.img-6.1.0-50-amd64\n  APPEND root=/dev/sda1 ro console=ttyS0\n';
  const fixed = rootByUuid(cfg, report());
  assert.deepEqual(fixed.changed, [`root=/dev/sda1 → root=UUID=${uuid}`]);
  assert.match(fixed.text, new RegExp(`APPEND root=UUID=${uuid} ro console=ttyS0`));
  const { entries, default: def } = parseExtlinux(fixed.text);
  assert.equal(def, 'debian');
  const lst = menuLst(entries, def);
  assert.match(lst, new RegExp(`^default 0\\ntimeout 1\\ntitle debian\\n  root \\(hd0,0\\)\\n  kernel /boot/vmlinuz-6.1.0-50-amd64 root=UUID=${uuid} ro console=ttyS0\\n  initrd /boot/initrd.img-6.1.0-50-amd64\\ntitle rescue\\n`, 'm'));
});

test('qemu arguments and domain XML: virtio disks in disk order (the first boots), virtio-net, CPUs, memory, firmware', () => {
  const m = { name: 'web,01', disks: [0, 1].map((disk) => ({ disk, file: `disk-${disk}.qcow2`, bus: 'virtio' as const, sizeBytes: 1 << 30 })),
    cpus: 4, memoryMiB: 4096, firmware: 'uefi' as const, mac: '52:54:00:aa:bb:cc', sourceId: 's', imageId: '3', v2v: { tool: 'virt-v2v-in-place' as const, version: '2.2.0', seconds: 1 } };
  const a = qemuArgs(m, { diskFiles: ['/d/a.qcow2', '/d/b,c.qcow2'], network: 'user-restricted', accel: 'tcg', serial: 'file:/tmp/s', vnc: 'unix:/tmp/v', qmp: 'unix:/tmp/q,server=on,wait=off', ovmfVars: '/d/vars.fd' });
  const after = (k: string) => a.filter((_, i) => a[i - 1] === k);
  assert.deepEqual(after('-name'), ['guest=web,,01']);
  assert.deepEqual([after('-smp'), after('-m'), after('-accel'), after('-cpu')], [['4'], ['4096M'], ['tcg'], ['max']]);
  assert.deepEqual(after('-device'), ['virtio-blk-pci,drive=disk0,bootindex=1', 'virtio-blk-pci,drive=disk1', 'virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:cc']);
  assert.deepEqual(after('-drive').slice(2), ['file=/d/a.qcow2,format=qcow2,if=none,id=disk0', 'file=/d/b,,c.qcow2,format=qcow2,if=none,id=disk1']);
  assert.match(after('-drive')[0]!, /^if=pflash,format=raw,unit=0,readonly=on,file=/);
  assert.deepEqual([after('-netdev'), after('-serial'), after('-vnc'), after('-qmp')], [['user,id=net0,restrict=on'], ['file:/tmp/s'], ['unix:/tmp/v'], ['unix:/tmp/q,server=on,wait=off']]);
  const none = qemuArgs({ ...m, firmware: 'bios' }, { diskFiles: ['a', 'b'], network: 'none', accel: 'kvm' });
  assert.ok(!none.includes('-netdev') && !none.some((x) => x.includes('pflash')));
  assert.equal(none[none.indexOf('-cpu') + 1], 'host');
  assert.throws(() => qemuArgs(m, { diskFiles: ['a'], network: 'none', accel: 'tcg' }), /2 disks in the manifest, 1 files given/);

  const xml = domainXml({ ...m, format: 1, target: 'kvm', from: 'vcenter', nic: 'virtio-net-pci', os: { type: 'linux', distro: 'debian', version: '12', arch: 'x86_64', hostname: 'h' },
    prepared: [], check: { verdict: 'ready', reasons: [] }, seconds: 1, createdAt: '' } satisfies ConvertManifest, ['/o/disk-0.qcow2', "/o/it's.qcow2"]);
  assert.match(xml, /<vcpu placement='static'>4<\/vcpu>/);
  assert.match(xml, /<os firmware='efi'>/);
  assert.match(xml, /<source file='\/o\/disk-0.qcow2'\/>\s*<target dev='vda' bus='virtio'\/>\s*<boot order='1'\/>/);
  assert.match(xml, /<source file='\/o\/it&apos;s.qcow2'\/>\s*<target dev='vdb' bus='virtio'\/>/);
  assert.match(xml, /<mac address='52:54:00:aa:bb:cc'\/>\s*<model type='virtio'\/>/);
  assert.deepEqual([0, 25, 26, 27].map((i) => driveName('vd', i)), ['vda', 'vdz', 'vdaa', 'vdab']);
});
