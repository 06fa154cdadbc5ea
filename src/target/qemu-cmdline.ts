/**
 * The qemu-system-x86_64 arguments that run a converted VM: virtio-blk disks in disk order (the first
 * boots), a virtio-net NIC, the manifest's CPUs, memory and firmware. `image convert` writes them into
 * qemu.sh; `image boot-test` runs them with its own serial, display and network.
 */
import type { ConvertManifest } from './convert-manifest.ts';

export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';

export interface QemuOptions {
  /** One path per manifest disk, in the manifest's order. */
  diskFiles: string[];
  /** `-serial` backend: "stdio" (default), "none", "file:PATH", "unix:PATH,server=on,wait=off", ... */
  serial?: string;
  /** `-display` (default "none"). */
  display?: string;
  /** `-vnc` display, e.g. "unix:/run/x.sock" or ":1" (none when absent). */
  vnc?: string;
  /** `-qmp` endpoint, e.g. "unix:/run/qmp.sock,server=on,wait=off" (none when absent). */
  qmp?: string;
  /** "none": no NIC at all; "user-restricted": the virtio NIC on user networking with no way out (restrict=on); "user": user networking. */
  network: 'none' | 'user-restricted' | 'user';
  accel: 'kvm' | 'tcg';
  /** UEFI only: the firmware code and a writable copy of its variable store (none: the code alone, read-only). */
  ovmfCode?: string;
  ovmfVars?: string;
}

/** Arguments (without the program name) for `qemu-system-x86_64`. */
export function qemuArgs(m: Pick<ConvertManifest, 'name' | 'disks' | 'cpus' | 'memoryMiB' | 'firmware' | 'mac'>, o: QemuOptions): string[] {
  if (o.diskFiles.length !== m.disks.length) throw new Error(`qemuArgs: ${m.disks.length} disks in the manifest, ${o.diskFiles.length} files given`);
  const a = ['-name', `guest=${m.name.replace(/,/g, ',,')}`, '-nodefaults', '-no-user-config',
    '-machine', 'q35', '-accel', o.accel, '-cpu', o.accel === 'kvm' ? 'host' : 'max',
    '-smp', String(m.cpus), '-m', `${m.memoryMiB}M`, '-vga', 'std', '-display', o.display ?? 'none'];
  if (o.vnc) a.push('-vnc', o.vnc);
  if (m.firmware === 'uefi') {
    a.push('-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${comma(o.ovmfCode ?? OVMF_CODE)}`);
    if (o.ovmfVars) a.push('-drive', `if=pflash,format=raw,unit=1,file=${comma(o.ovmfVars)}`);
  }
  m.disks.forEach((d, i) => {
    a.push('-drive', `file=${comma(o.diskFiles[i]!)},format=qcow2,if=none,id=disk${d.disk}`,
      '-device', `virtio-blk-pci,drive=disk${d.disk}${i === 0 ? ',bootindex=1' : ''}`);
  });
  if (o.network !== 'none') {
    a.push('-netdev', `user,id=net0${o.network === 'user-restricted' ? ',restrict=on' : ''}`, '-device', `virtio-net-pci,netdev=net0,mac=${m.mac}`);
  }
  a.push('-serial', o.serial ?? 'stdio');
  if (o.qmp) a.push('-qmp', o.qmp);
  return a;
}

/** qemu's option syntax: a comma inside a value is doubled. */
function comma(v: string): string {
  return v.replace(/,/g, ',,');
}

/** A POSIX sh word. */
export function shQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * qemu.sh: runs the converted VM from the folder the script is in (disks by relative name), on KVM
 * when /dev/kvm opens and ACCEL is not set, else TCG; serial console on the terminal, user networking.
 */
export function qemuScript(m: ConvertManifest): string {
  const args = qemuArgs(m, { diskFiles: m.disks.map((d) => d.file), network: 'user', accel: 'tcg', serial: 'mon:stdio',
    ovmfVars: m.firmware === 'uefi' ? 'OVMF_VARS.fd' : undefined });
  const i = args.indexOf('-accel');
  const j = args.indexOf('-cpu');
  args[i + 1] = '"$ACCEL"';
  args[j + 1] = '"$CPU"';
  const words = args.map((w) => (w.startsWith('"$') ? w : shQuote(w)));
  const lines = ['#!/bin/sh', `# ${m.name}: image ${m.imageId} of source ${m.sourceId}, converted for KVM by vmlift (virt-v2v-in-place ${m.v2v.version}).`,
    '# ACCEL=tcg|kvm overrides the accelerator (default: kvm when /dev/kvm can be opened). Extra arguments go to qemu.',
    'set -e', 'cd "$(dirname "$0")"',
    'if [ -z "$ACCEL" ]; then if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then ACCEL=kvm; else ACCEL=tcg; fi; fi',
    'if [ "$ACCEL" = kvm ]; then CPU=host; else CPU=max; fi'];
  if (m.firmware === 'uefi') lines.push(`[ -f OVMF_VARS.fd ] || cp ${shQuote(OVMF_CODE.replace('CODE', 'VARS'))} OVMF_VARS.fd`);
  lines.push(`exec qemu-system-x86_64 \\\n  ${chunkWords(words).join(' \\\n  ')} \\\n  "$@"`, '');
  return lines.join('\n');
}

/** Option and value on one line. */
function chunkWords(words: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < words.length; i++) {
    if (words[i]!.startsWith('-') && i + 1 < words.length && !words[i + 1]!.startsWith('-')) { out.push(`${words[i]} ${words[i + 1]}`); i++; } else out.push(words[i]!);
  }
  return out;
}
