/**
 * The image check report: what an image's guest is (OS, kernels, bootloader, filesystems,
 * fstab, drivers in the initramfs, VMware Tools, cloud-init) and, per target, whether it boots
 * there as is (ready), after conversion (needs conversion), or not at all (blocked), with each
 * reason and its fix. Reads the image through a sparse raw export to a temporary folder, so the
 * stored image is never opened for writing.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { ImageStore } from '../store/index.ts';
import { Guestfs, abortError, type GuestfsOptions } from './guestfs.ts';
import { onAbort } from './abort.ts';

const run = promisify(execFile);

export const VIRTIO_MODULES = ['virtio_blk', 'virtio_scsi', 'virtio_net'] as const;
export type VirtioModule = typeof VIRTIO_MODULES[number];

export interface OsInfo {
  root: string; type: string; distro: string; product: string; version: string; arch: string; hostname: string;
}
export interface KernelInfo {
  version: string;
  initramfs: string | null;
  /** In the initramfs (a module there, or built into the kernel); null when the initramfs could not be read. */
  virtioInInitramfs: Record<VirtioModule, boolean | null>;
  /** Built into the kernel or shipped as a module under /lib/modules: a rebuilt initramfs can take it. */
  virtioAvailable: Record<VirtioModule, boolean>;
}
export interface PartitionInfo { device: string; disk: number; number: number; start: number; size: number }
export interface FilesystemInfo {
  device: string; type: string; label: string; uuid: string; mountpoint: string | null;
  sizeBytes: number | null; usedBytes: number | null;
}
export interface FstabEntry {
  spec: string; mountpoint: string; type: string; options: string;
  /** Whether the device names something the guest finds on the target; a /dev/sdX name does not on virtio (/dev/vdX). */
  resolves: Record<Target, boolean>;
  note?: string;
}
export interface BootloaderInfo { type: 'grub2' | 'extlinux' | 'none'; config: string | null; rootParams: string[] }
export type Target = 'kvm';
export type Verdict = 'ready' | 'needs conversion' | 'blocked';
export interface Reason { code: string; severity: 'blocker' | 'conversion' | 'warning'; message: string; fix: string }
export interface TargetVerdict { verdict: Verdict; reasons: Reason[] }

export interface InspectReport {
  disks: { disk: number; device: string; partitionTable: string | null; sizeBytes: number }[];
  partitions: PartitionInfo[];
  filesystems: FilesystemInfo[];
  os: OsInfo | null;
  kernels: KernelInfo[];
  bootloader: BootloaderInfo | null;
  fstab: FstabEntry[];
  vmwareTools: boolean;
  cloudInit: boolean;
  targets: Record<Target, TargetVerdict>;
}

const num = (s: string | null | undefined): number => Number((s ?? '').trim());
const trim = (s: string | null): string => (s ?? '').trim();

export interface InspectImageOptions {
  /** Aborting ends the appliance at once and rejects with the signal's reason (the export under way finishes first). */
  signal?: AbortSignal | undefined;
  /** The libguestfs appliance's memory in MiB (default libguestfs' own). */
  memoryMiB?: number | undefined;
}

/** Exports every disk of an image to sparse raw files in a temporary folder, inspects them, removes them. */
export async function inspectImage(store: ImageStore, sourceId: string, imageId: string, o: InspectImageOptions = {}): Promise<InspectReport> {
  const info = await store.getImage(sourceId, imageId);
  const tmp = await mkdtemp(join(tmpdir(), 'vmlift-inspect-'));
  const unregister = onAbort(() => rmSync(tmp, { recursive: true, force: true }));
  try {
    const files: string[] = [];
    for (const d of info.disks) {
      if (o.signal?.aborted) throw abortError(o.signal);
      const f = join(tmp, `disk${d.disk}.raw`);
      await store.export(sourceId, imageId, d.disk, 'raw', f);
      files.push(f);
    }
    try {
      const report = await inspectDisks(files, tmp, { signal: o.signal, memoryMiB: o.memoryMiB });
      // Commands of a killed session answer nothing: what was collected then is not a report.
      if (o.signal?.aborted) throw abortError(o.signal);
      return report;
    } catch (e) {
      if (o.signal?.aborted) throw abortError(o.signal);
      throw e;
    }
  } finally {
    unregister();
    await rm(tmp, { recursive: true, force: true });
  }
}

/** Inspects disk files (in order: disk 0, 1, ...; raw unless told), read-only. `scratch` is a folder for the initramfs copies. */
export async function inspectDisks(files: string[], scratch: string, o: Omit<GuestfsOptions, 'write'> = {}): Promise<InspectReport> {
  const g = await Guestfs.open(files, o);
  try {
    return await collect(g, scratch);
  } finally {
    await g.close();
  }
}

/** The report over an open session (its filesystems are left mounted read-only where inspection mounted them). */
export async function collect(g: Guestfs, scratch: string): Promise<InspectReport> {
  const devices = await g.lines('list-devices');
  const disks = [];
  for (const [i, device] of devices.entries()) {
    disks.push({ disk: i, device, partitionTable: (await g.tryCmd('part-get-parttype', device))?.trim() || null,
      sizeBytes: num(await g.tryCmd('blockdev-getsize64', device)) });
  }
  const partitions: PartitionInfo[] = [];
  for (const p of await g.lines('list-partitions')) {
    const disk = devices.findIndex((d) => p.startsWith(d));
    const number = num(await g.tryCmd('part-to-partnum', p));
    const dev = devices[disk] ?? '';
    const parts = (await g.tryCmd('part-list', dev)) ?? '';
    const m = new RegExp(`part_num: ${number}\\s+part_start: (\\d+)\\s+part_end: \\d+\\s+part_size: (\\d+)`).exec(parts);
    partitions.push({ device: p, disk, number, start: Number(m?.[1] ?? 0), size: Number(m?.[2] ?? 0) });
  }
  const filesystems: FilesystemInfo[] = [];
  for (const line of await g.lines('list-filesystems')) {
    const [device, type] = line.split(': ') as [string, string];
    filesystems.push({ device, type: type || 'unknown', label: trim(await g.tryCmd('vfs-label', device)),
      uuid: trim(await g.tryCmd('vfs-uuid', device)), mountpoint: null, sizeBytes: null, usedBytes: null });
  }

  const roots = await g.lines('inspect-os');
  const report: InspectReport = { disks, partitions, filesystems, os: null, kernels: [], bootloader: null, fstab: [],
    vmwareTools: false, cloudInit: false, targets: { kvm: { verdict: 'blocked', reasons: [] } } };
  const root = roots[0];
  if (root) {
    const get = async (what: string) => trim(await g.tryCmd(`inspect-get-${what}`, root));
    const major = await get('major-version'), minor = await get('minor-version');
    report.os = { root, type: await get('type'), distro: await get('distro'), product: await get('product-name'),
      version: minor && minor !== '0' ? `${major}.${minor}` : major, arch: await get('arch'), hostname: await get('hostname') };
    const mounts = (await g.lines('inspect-get-mountpoints', root)).map((l) => l.split(': ') as [string, string])
      .sort((a, b) => a[0].length - b[0].length);
    for (const [mp, dev] of mounts) {
      await g.tryCmd('mount-ro', dev, mp);
      const mounted = (await g.lines('mountpoints')).some((l) => l === `${dev}: ${mp}`);
      const fs = filesystems.find((f) => f.device === dev);
      if (!fs || !mounted) continue;
      fs.mountpoint = mp;
      const st = await g.tryCmd('statvfs', mp);
      if (st) {
        const field = (k: string) => Number(new RegExp(`^\\s*${k}: (\\d+)\\s*$`, 'm').exec(st)?.[1] ?? 0);
        fs.sizeBytes = field('blocks') * field('frsize');
        fs.usedBytes = (field('blocks') - field('bfree')) * field('frsize');
      }
    }
    if (report.os.type === 'linux') await linuxFacts(g, report, scratch);
  }
  report.targets.kvm = kvmVerdict(report, roots.length);
  return report;
}

async function linuxFacts(g: Guestfs, r: InspectReport, scratch: string): Promise<void> {
  const exists = async (p: string) => trim(await g.tryCmd('exists', p)) === 'true';
  const fstab = await g.tryCmd('cat', '/etc/fstab');
  for (const line of (fstab ?? '').split('\n')) {
    const f = line.replace(/#.*/, '').trim().split(/\s+/);
    if (f.length < 2 || !f[0]) continue;
    const [spec, mountpoint, type = '', options = ''] = f as [string, string, string?, string?];
    r.fstab.push({ spec, mountpoint, type, options, ...resolveSpec(spec, options, r.filesystems) });
  }

  const modDirs = [...await g.lines('glob-expand', '/lib/modules/*'), ...await g.lines('glob-expand', '/usr/lib/modules/*')];
  const versions = [...new Set(modDirs.map((d) => d.replace(/\/$/, '').split('/').pop()!))].sort();
  for (const version of versions) {
    const initrd = (await g.lines('glob-expand', `/boot/initrd.img-${version}`))[0]
      ?? (await g.lines('glob-expand', `/boot/initramfs-${version}.img`))[0] ?? null;
    const config = (await g.tryCmd('cat', `/boot/config-${version}`)) ?? '';
    const builtin = new Set(([['virtio_blk', 'CONFIG_VIRTIO_BLK'], ['virtio_scsi', 'CONFIG_SCSI_VIRTIO'], ['virtio_net', 'CONFIG_VIRTIO_NET']] as const)
      .filter(([, c]) => new RegExp(`^${c}=y$`, 'm').test(config)).map(([m]) => m as string));
    const shipped = await g.lines('find', `/lib/modules/${version}/kernel/drivers`);
    const listed = initrd ? await initramfsFiles(g, initrd, scratch) : null;
    const inInitrd = {} as Record<VirtioModule, boolean | null>;
    const available = {} as Record<VirtioModule, boolean>;
    for (const m of VIRTIO_MODULES) {
      const file = new RegExp(`/${m}\\.ko(\\.[a-z]+)?$`, 'm');
      inInitrd[m] = builtin.has(m) ? true : listed === null ? null : file.test(listed);
      available[m] = builtin.has(m) || shipped.some((p) => file.test(`/${p}`));
    }
    r.kernels.push({ version, initramfs: initrd, virtioInInitramfs: inInitrd, virtioAvailable: available });
  }

  for (const [type, config] of [['grub2', '/boot/grub/grub.cfg'], ['grub2', '/boot/grub2/grub.cfg'], ['extlinux', '/boot/extlinux/extlinux.conf'],
    ['extlinux', '/extlinux.conf'], ['extlinux', '/boot/syslinux/syslinux.cfg']] as const) {
    if (!await exists(config)) continue;
    const text = (await g.tryCmd('cat', config)) ?? '';
    r.bootloader = { type, config, rootParams: [...new Set([...text.matchAll(/\broot=(\S+)/g)].map((m) => m[1]!))] };
    break;
  }
  r.bootloader ??= { type: 'none', config: null, rootParams: [] };
  // The daemon, not /etc/vmware-tools: removing the package (as virt-v2v does) leaves its configuration files.
  for (const p of ['/usr/bin/vmtoolsd', '/usr/sbin/vmtoolsd', '/usr/lib/vmware-tools/sbin64/vmtoolsd']) if (await exists(p)) { r.vmwareTools = true; break; }
  for (const p of ['/usr/bin/cloud-init', '/etc/cloud/cloud.cfg']) if (await exists(p)) { r.cloudInit = true; break; }
}

/** File list of an initramfs: copied out of the guest and listed with the host's lsinitramfs (any compression, early microcode). */
async function initramfsFiles(g: Guestfs, path: string, scratch: string): Promise<string | null> {
  const local = join(scratch, `initrd-${path.split('/').pop()}`);
  await g.tryCmd('download', path, local);
  if (!existsSync(local)) return null;
  try {
    return (await run('lsinitramfs', [local], { maxBuffer: 256 << 20 })).stdout;
  } catch {
    return (await g.tryCmd('initrd-list', path)) ?? null;
  } finally {
    await rm(local, { force: true });
  }
}

/** Whether a device spec of fstab or a root= parameter finds its device once the disks are on virtio-blk. */
export function resolveSpec(spec: string, options: string, fss: FilesystemInfo[]): { resolves: Record<Target, boolean>; note?: string } {
  const kv = /^(UUID|LABEL|PARTUUID|PARTLABEL)=(.+)$/.exec(spec);
  const byPath = /^\/dev\/disk\/by-(uuid|label|partuuid|partlabel)\/(.+)$/.exec(spec);
  const optional = /(^|,)(noauto|nofail)(,|$)/.test(options);
  if (kv || byPath) {
    const kind = (kv?.[1] ?? byPath![1]!).toUpperCase();
    const value = kv?.[2] ?? byPath![2]!;
    if (kind === 'UUID' && fss.length && !fss.some((f) => f.uuid.toLowerCase() === value.toLowerCase())) {
      return { resolves: { kvm: optional }, note: 'no filesystem of the image has this UUID' };
    }
    if (kind === 'LABEL' && fss.length && !fss.some((f) => f.label === value)) {
      return { resolves: { kvm: optional }, note: 'no filesystem of the image has this label' };
    }
    return { resolves: { kvm: true } };
  }
  if (/^\/dev\/(sd|hd|xvd)[a-z]+\d*$/.test(spec)) {
    return { resolves: { kvm: optional }, note: `a ${spec.slice(5, 7)}* name: on virtio-blk the disk is /dev/vd*` };
  }
  return { resolves: { kvm: true } };
}

/** The verdict for KVM (virtio disk and NIC), with a reason and a fix for each finding. */
export function kvmVerdict(r: InspectReport, roots: number): TargetVerdict {
  const reasons: Reason[] = [];
  const convert = 'convert the image: `vmlift image convert --to kvm` (virt-v2v-in-place)';
  if (!r.os) {
    const unknown = r.filesystems.filter((f) => f.type === 'unknown').map((f) => f.device);
    reasons.push({ code: 'NO_OS', severity: 'blocker',
      message: r.filesystems.length === 0 ? 'no operating system found: the image holds no filesystem' + (r.partitions.length ? '' : ' and no partition table')
        : `no operating system found on ${r.filesystems.map((f) => `${f.device} (${f.type})`).join(', ')}` + (unknown.length ? `; unknown filesystem on ${unknown.join(', ')}` : ''),
      fix: "sync the VM's boot disk (and every disk its root filesystem spans); a zeroed or damaged boot disk cannot be converted" });
    return { verdict: 'blocked', reasons };
  }
  if (roots > 1) reasons.push({ code: 'MULTI_BOOT', severity: 'warning', message: `${roots} operating systems found; the report covers ${r.os.root}`, fix: 'check which one the VM boots' });
  if (r.os.type === 'windows') {
    reasons.push({ code: 'WINDOWS_VIRTIO', severity: 'conversion', message: `${r.os.product}: Windows needs the virtio-win drivers to boot on a virtio disk`,
      fix: 'get the virtio-win drivers (not shipped by Debian; the virtio-win ISO), point VIRTIO_WIN at them, then ' + convert });
  } else if (r.os.type !== 'linux') {
    reasons.push({ code: 'OS_UNSUPPORTED', severity: 'blocker', message: `${r.os.type} guests are not checked or converted by vmlift`, fix: 'convert it with the vendor\'s tools' });
  } else {
    if (r.kernels.length === 0) {
      reasons.push({ code: 'NO_KERNEL', severity: 'blocker', message: 'no kernel found under /lib/modules', fix: 'install a kernel in the guest (linux-image-amd64 on Debian) and sync again' });
    }
    for (const k of r.kernels) {
      const missing = (['virtio_blk', 'virtio_scsi'] as const).filter((m) => k.virtioInInitramfs[m] !== true);
      if (k.initramfs === null) {
        reasons.push({ code: 'NO_INITRAMFS', severity: 'conversion', message: `kernel ${k.version} has no initramfs`, fix: convert + ' (it builds the initramfs)' });
      } else if (missing.length === 2 && k.virtioInInitramfs.virtio_blk === null) {
        reasons.push({ code: 'INITRAMFS_UNREADABLE', severity: 'conversion', message: `the initramfs of ${k.version} could not be listed`, fix: convert + ' (it rebuilds the initramfs with virtio)' });
      } else if (missing.length) {
        const none = missing.filter((m) => !k.virtioAvailable[m]);
        if (none.length === 2) {
          reasons.push({ code: 'KERNEL_NO_VIRTIO', severity: 'blocker', message: `kernel ${k.version} ships neither virtio_blk nor virtio_scsi`, fix: 'install a distribution kernel with virtio drivers in the guest, then sync again' });
        } else {
          reasons.push({ code: 'INITRAMFS_NO_VIRTIO', severity: 'conversion', message: `the initramfs of ${k.version} lacks ${missing.join(' and ')}: the root disk is not found on a virtio controller`,
            fix: convert + ', or in the guest: add virtio_blk and virtio_scsi to /etc/initramfs-tools/modules (dracut: add_drivers) and rebuild the initramfs' });
        }
      }
      if (k.virtioInInitramfs.virtio_net !== true && !k.virtioAvailable.virtio_net) {
        reasons.push({ code: 'KERNEL_NO_VIRTIO_NET', severity: 'warning', message: `kernel ${k.version} has no virtio_net: no network on a virtio NIC`, fix: 'use an emulated NIC (e1000) or install a kernel with virtio_net' });
      }
    }
    for (const e of r.fstab.filter((x) => !x.resolves.kvm)) {
      reasons.push({ code: 'FSTAB_DEVICE', severity: 'conversion', message: `fstab mounts ${e.mountpoint} from ${e.spec}${e.note ? ` (${e.note})` : ''}`,
        fix: `${convert}, or name the filesystem by UUID= in /etc/fstab` });
    }
    for (const p of r.bootloader?.rootParams ?? []) {
      const res = resolveSpec(p, '', r.filesystems);
      if (!res.resolves.kvm) reasons.push({ code: 'BOOT_ROOT_DEVICE', severity: 'conversion', message: `the bootloader (${r.bootloader!.config}) passes root=${p}${res.note ? ` (${res.note})` : ''}`,
        fix: `${convert}, or pass root=UUID=… in the bootloader configuration` });
    }
    if (r.bootloader?.type === 'none') {
      reasons.push({ code: 'NO_BOOTLOADER', severity: 'warning', message: 'no GRUB or extlinux configuration found (UEFI or an external kernel?)', fix: 'check that the VM boots from this disk' });
    }
    if (r.vmwareTools) {
      reasons.push({ code: 'VMWARE_TOOLS', severity: 'conversion', message: 'VMware Tools (open-vm-tools) are installed: their services fail outside VMware',
        fix: `${convert} (it removes VMware Tools), or remove open-vm-tools in the guest` });
    }
  }
  const verdict: Verdict = reasons.some((x) => x.severity === 'blocker') ? 'blocked'
    : reasons.some((x) => x.severity === 'conversion') ? 'needs conversion' : 'ready';
  return { verdict, reasons };
}
