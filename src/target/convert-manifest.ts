/**
 * `convert.json`, the manifest `vmlift image convert` writes last into its output folder: what the
 * converted VM is (disks, CPUs, memory, firmware, NIC, guest OS) and how it was made. `image
 * boot-test --converted DIR` reads it back with `readConvertManifest`.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CodedError } from '../util/errors.ts';

export const MANIFEST_FILE = 'convert.json';

export interface ConvertedDisk {
  disk: number;
  /** File name inside the output folder: `disk-<n>.qcow2`. */
  file: string;
  bus: 'virtio';
  /** The disk's virtual size (the source disk's capacity). */
  sizeBytes: number;
}

export interface ConvertManifest {
  format: 1;
  sourceId: string;
  imageId: string;
  target: 'kvm';
  /** A name for the VM (the image's VM reference or the source id): libvirt's <name>, qemu's -name. */
  name: string;
  disks: ConvertedDisk[];
  cpus: number;
  memoryMiB: number;
  /** Where CPUs, memory and firmware come from: the image meta (vCenter at the cycle), or vmlift's defaults. */
  from: 'vcenter' | 'default';
  firmware: 'bios' | 'uefi';
  nic: 'virtio-net-pci';
  /** MAC address of the NIC (locally administered, derived from the source id: the same on every convert). */
  mac: string;
  os: { type: string; distro: string; version: string; arch: string; hostname: string };
  v2v: { tool: 'virt-v2v-in-place'; version: string; seconds: number };
  /** What vmlift changed in the overlay before virt-v2v ran (things virt-v2v cannot do by itself), one line each. */
  prepared: string[];
  /** The libguestfs check of the converted disks: KVM verdict and the codes of what is left (warnings). */
  check: { verdict: string; reasons: string[] };
  seconds: number;
  createdAt: string;
}

/** Reads and checks the manifest of a converted folder. */
export async function readConvertManifest(dir: string): Promise<ConvertManifest> {
  const path = join(dir, MANIFEST_FILE);
  let m: ConvertManifest;
  try {
    m = JSON.parse(await readFile(path, 'utf8')) as ConvertManifest;
  } catch (e) {
    throw new CodedError('NOT_CONVERTED', `${dir} is not a converted image folder: ${path} cannot be read (${(e as Error).message})`,
      { fix: 'give the --output folder of a finished `vmlift image convert` (a failed convert leaves none)', cause: e });
  }
  if (m.format !== 1 || m.target !== 'kvm' || !Array.isArray(m.disks) || m.disks.length === 0 || !(m.cpus > 0) || !(m.memoryMiB > 0)) {
    throw new CodedError('BAD_MANIFEST', `${path} is not a convert manifest of format 1 for kvm`, { fix: 'convert the image again with this vmlift version' });
  }
  return m;
}
