/**
 * The words the store, the receiver, the sender, the engine and the agent share about images.
 *
 * A *source* (one VM or one agent machine; id matches [a-z0-9-]) has *images*; each image is a
 * full point-in-time image of each of the source's disks (numbered 0..n-1). These shapes also
 * travel as JSON on the control connection, so their field names are part of the wire protocol.
 */
import type { Range } from './ranges.ts';

export interface DiskSpec {
  /** Disk number within the source, 0-based. */
  disk: number;
  /** Capacity in bytes (a multiple of 512). */
  capacity: number;
  /** Free-form label (device path, VMware disk label); informational. */
  label?: string;
}

export interface ImageDiskInfo extends DiskSpec {
  /** Bytes of the disk that are not holes. */
  allocatedBytes: number;
  /** Number of chunk references (non-hole chunks) in this disk's index. */
  chunkCount: number;
}

export interface ImageInfo {
  sourceId: string;
  /** Image id: a sequence number, increasing per source, as a decimal string (`"1"`, `"2"`, ...). */
  imageId: string;
  seq: number;
  /** ISO time the image was committed. */
  committedAt: string;
  /** Id of the cycle that produced it. */
  cycleId: string;
  /** Image this one was built on, or null for a first (full) cycle. */
  baseImageId: string | null;
  disks: ImageDiskInfo[];
  /** Free-form metadata the sender attached at commit (e.g. CBT changeIds, snapshot name). */
  meta: Record<string, unknown>;
}

/**
 * The VM's hardware as its hypervisor reported it at the cycle (image meta `vm`): what a conversion
 * gives the converted VM. Absent from images of agents and of older versions.
 */
export interface VmHardware {
  cpus: number;
  memoryMiB: number;
  /** "bios" or "uefi" (vCenter's config.firmware "efi"). */
  firmware: 'bios' | 'uefi';
  /** vCenter's config.guestId, e.g. "debian12_64Guest", "windows2019srv_64Guest". */
  guestId: string;
}

export interface HeldRanges {
  disk: number;
  /** Ranges durably applied in this open cycle, sorted and coalesced. */
  ranges: Range[];
}

/**
 * Digests the sender computed while reading a disk, sent at commit so the receiver can verify the
 * image before it publishes it: the SHA-256 (hex) of the whole disk, and/or the root of a digest
 * tree over the ranges it read (transfer/digest-tree.ts defines the tree). Both are of fixed size
 * per disk; `tree.ranges` is as long as the list of areas read, not the bytes.
 */
export interface SourceDigest {
  disk: number;
  sha256?: string;
  /** `ranges` absent on the wire: the disk's `expected` ranges of the commit (what a sender read is most often all it sent). */
  tree?: { ranges?: Range[]; root: string };
}
