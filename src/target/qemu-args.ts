/**
 * The qemu-system-x86_64 command line of a boot test: the disks on the bus the target gives them,
 * no host network (no NIC, or user-mode networking restricted to the guest), the serial console and
 * QMP on unix sockets the caller listens on, VGA kept (for screendump) without a display window,
 * and SeaBIOS's text output mirrored on the serial console (etc/sercon-port) so "No bootable
 * device" reaches the console reader.
 */
import { existsSync } from 'node:fs';
import type { Accel } from './accel-probe.ts';

export type DiskBus = 'virtio' | 'ide' | 'sata' | 'scsi';

export interface QemuDisk { file: string; format: 'qcow2' | 'raw'; bus: DiskBus }

export interface QemuSpec {
  accel: Accel;
  cpus: number;
  memoryMiB: number;
  disks: QemuDisk[];
  /** A NIC model on user-mode networking with restrict=on (no route out of the guest), or none. */
  nic: 'virtio-net-pci' | 'e1000' | 'none';
  firmware: 'bios' | 'uefi';
  /** Unix sockets QEMU connects to (the caller listens): the first serial port, and QMP. */
  serialSocket: string;
  qmpSocket: string;
  /** A file holding SeaBIOS's serial console port (2 bytes, little-endian 0x3f8): see seaBiosSerconFile(). */
  serconFile?: string;
  /** Writable copy of the UEFI variable store (firmware uefi). */
  uefiVars?: string;
  name?: string;
}

export const OVMF_CODE = ['/usr/share/OVMF/OVMF_CODE_4M.fd', '/usr/share/OVMF/OVMF_CODE.fd'];
export const OVMF_VARS = ['/usr/share/OVMF/OVMF_VARS_4M.fd', '/usr/share/OVMF/OVMF_VARS.fd'];

/** The bytes of SeaBIOS's etc/sercon-port fw_cfg file: COM1 (0x3f8). */
export const SERCON_COM1 = Buffer.from([0xf8, 0x03]);

export function qemuArgs(s: QemuSpec): string[] {
  const a = ['-name', s.name ?? 'vmlift-boot-test', '-no-user-config', '-nodefaults',
    '-machine', `pc,accel=${s.accel}`, '-cpu', 'max', '-smp', String(s.cpus), '-m', String(s.memoryMiB),
    '-vga', 'std', '-display', 'none', '-boot', 'strict=on', '-no-reboot'];
  if (s.firmware === 'uefi') {
    const code = OVMF_CODE.find((f) => existsSync(f));
    if (!code || !s.uefiVars) throw new Error('UEFI firmware (Debian package ovmf) is not installed');
    a.push('-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${code}`, '-drive', `if=pflash,format=raw,unit=1,file=${s.uefiVars}`);
  } else if (s.serconFile) {
    a.push('-fw_cfg', `name=etc/sercon-port,file=${s.serconFile}`);
  }
  if (s.disks.some((d) => d.bus === 'scsi')) a.push('-device', 'virtio-scsi-pci,id=scsi0');
  if (s.disks.some((d) => d.bus === 'sata')) a.push('-device', 'ahci,id=ahci0');
  s.disks.forEach((d, i) => {
    a.push('-drive', `file=${d.file},format=${d.format},if=none,id=disk${i},cache=unsafe,discard=unmap`);
    const boot = i === 0 ? ',bootindex=0' : '';
    switch (d.bus) {
      case 'virtio': a.push('-device', `virtio-blk-pci,drive=disk${i}${boot}`); break;
      case 'ide': a.push('-device', `ide-hd,drive=disk${i},bus=ide.${Math.floor(i / 2)},unit=${i % 2}${boot}`); break;
      case 'sata': a.push('-device', `ide-hd,drive=disk${i},bus=ahci0.${i}${boot}`); break;
      case 'scsi': a.push('-device', `scsi-hd,drive=disk${i},bus=scsi0.0,scsi-id=${i}${boot}`); break;
    }
  });
  a.push(...(s.nic === 'none' ? ['-nic', 'none'] : ['-nic', `user,model=${s.nic},restrict=on`]));
  a.push('-chardev', `socket,id=serial0,path=${s.serialSocket}`, '-serial', 'chardev:serial0',
    '-chardev', `socket,id=qmp0,path=${s.qmpSocket}`, '-mon', 'chardev=qmp0,mode=control',
    '-monitor', 'none');
  return a;
}
