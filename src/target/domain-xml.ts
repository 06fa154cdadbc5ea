/**
 * libvirt domain XML: the converted VM's (virtio disks in disk order, a virtio-net NIC, CPUs, memory,
 * firmware), and the source description virt-v2v-in-place reads with `-i libvirtxml`.
 */
import type { ConvertManifest } from './convert-manifest.ts';

export function xmlEscape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

/** vda, vdb, ..., vdz, vdaa, ... (libvirt's target names). */
export function driveName(prefix: string, i: number): string {
  let s = '';
  for (let n = i + 1; n > 0; n = Math.floor((n - 1) / 26)) s = String.fromCharCode(97 + ((n - 1) % 26)) + s;
  return prefix + s;
}

/** The converted VM for libvirt (`virsh define domain.xml`); `diskPaths` absolute, in the manifest's disk order. */
export function domainXml(m: ConvertManifest, diskPaths: string[]): string {
  const e = xmlEscape;
  const disks = m.disks.map((d, i) => `    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${e(diskPaths[i]!)}'/>
      <target dev='${driveName('vd', i)}' bus='virtio'/>${i === 0 ? "\n      <boot order='1'/>" : ''}
    </disk>`).join('\n');
  return `<domain type='kvm'>
  <name>${e(m.name)}</name>
  <description>${e(`image ${m.imageId} of source ${m.sourceId}, converted by vmlift (virt-v2v-in-place ${m.v2v.version})`)}</description>
  <memory unit='MiB'>${m.memoryMiB}</memory>
  <currentMemory unit='MiB'>${m.memoryMiB}</currentMemory>
  <vcpu placement='static'>${m.cpus}</vcpu>
  <os${m.firmware === 'uefi' ? " firmware='efi'" : ''}>
    <type arch='x86_64' machine='q35'>hvm</type>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='host-model'/>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
${disks}
    <interface type='network'>
      <source network='default'/>
      <mac address='${m.mac}'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
    <video>
      <model type='vga'/>
    </video>
  </devices>
</domain>
`;
}

/** The source guest as virt-v2v-in-place reads it (`-i libvirtxml`): qcow2 overlays on the SCSI bus the VMware VM had. */
export function v2vSourceXml(o: { name: string; cpus: number; memoryMiB: number; firmware: 'bios' | 'uefi'; overlays: string[] }): string {
  const e = xmlEscape;
  const disks = o.overlays.map((p, i) => `    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${e(p)}'/>
      <target dev='${driveName('sd', i)}' bus='scsi'/>
    </disk>`).join('\n');
  return `<domain type='kvm'>
  <name>${e(o.name)}</name>
  <memory unit='MiB'>${o.memoryMiB}</memory>
  <vcpu>${o.cpus}</vcpu>
  <os${o.firmware === 'uefi' ? " firmware='efi'" : ''}>
    <type arch='x86_64'>hvm</type>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <devices>
${disks}
  </devices>
</domain>
`;
}
