/**
 * What the engine needs from vCenter, the disk transports and the receiver, as narrow services.
 * cli/ wires the real implementations (src/vsphere, src/source, src/transfer) into them.
 */
import type { BlockSource } from '../source/types.ts';
import type { ReceiverSession } from '../transfer/contract.ts';
import type { Range } from '../model/ranges.ts';
import type { VmHardware } from '../model/images.ts';
import type { Transport } from '../state/types.ts';

export interface PreflightCheck { name: string; ok: boolean; message: string; fix?: string }

export interface SnapshotDisk {
  /** vSphere device key. */
  key: number;
  label: string;
  capacity: number;
  /** `backing.changeId` at the snapshot; null when CBT is off for the disk. */
  changeId: string | null;
  /** `backing.uuid` (the virtual disk's own UUID); with the key, the disk's identity across cycles. Null when vCenter gives none. */
  uuid: string | null;
  /** The disk's backing file in the snapshot ("[datastore] vm/vm-000001.vmdk"), for datastore transports. */
  file?: string;
  /**
   * Backing facts at the snapshot (src/vsphere DiskInfo; optional, absent on a flat base disk or when
   * vCenter did not send them): what a transport needs to know whether it can read the disk.
   * `deltaDiskFormat` (seSparseFormat, redoLogFormat, …) and `deltaDiskFormatVariant` of a delta.
   */
  deltaDiskFormat?: string;
  deltaDiskFormatVariant?: string;
  /** The `backing.parent` chain, nearest first (length = chain depth). */
  parents?: string[];
  /** The vSAN or vVols object holding the data. */
  backingObjectId?: string;
  /** The datastore: managed object id, name and `summary.type` (VMFS, NFS, vsan, VVOL, …). */
  datastoreRef?: string;
  datastore?: string;
  datastoreType?: string;
}

export interface SnapshotHandle {
  /** Managed object id of the snapshot (`snapshot-12`). */
  ref: string;
  name: string;
}

export interface VCenterService {
  preflight(vmRef: string): Promise<PreflightCheck[]>;
  /** Enable CBT on the VM and all its disks (idempotent; stun/unstun when powered on). */
  ensureCbt(vmRef: string): Promise<{ changed: boolean }>;
  /** ESXi host the VM runs on: the key for per-host concurrency. */
  hostOf(vmRef: string): Promise<string>;
  /** Remove leftover snapshots whose names start with `prefix`, except the one named `keep`; returns how many. */
  sweepSnapshots(vmRef: string, prefix: string, keep?: string): Promise<number>;
  /** The VM's snapshot named `name`, or null (a resumed cycle reads the snapshot it started on, when it is still there). */
  findSnapshot?(vmRef: string, name: string): Promise<SnapshotHandle | null>;
  /** `onProgress`: the task's percent done, as vCenter reports it while the cycle waits. */
  createSnapshot(vmRef: string, name: string, opts: { quiesce: boolean; onProgress?: (percent: number) => void }): Promise<SnapshotHandle>;
  /** The disks as seen in the snapshot's config, with their changeIds. */
  snapshotDisks(vmRef: string, snapshot: SnapshotHandle): Promise<SnapshotDisk[]>;
  /** docs/design.md step 4: the whole QueryChangedDiskAreas paging loop for one disk. `changeId` "*" = allocated areas. */
  changedAreas(vmRef: string, snapshot: SnapshotHandle, disk: SnapshotDisk, changeId: string): Promise<Range[]>;
  removeSnapshot(vmRef: string, snapshot: SnapshotHandle, opts?: { onProgress?: (percent: number) => void }): Promise<void>;
  /** CPUs, memory, firmware and guest id as vCenter reports them (recorded in the image meta as `vm`); null when unknown. */
  vmHardware?(vmRef: string): Promise<VmHardware | null>;
}

/** The transport a disk is read through this cycle, and why (shown per disk by `job show`). */
export interface DiskTransportChoice { transport: string; reason: string }

export interface DiskOpenContext {
  jobId: string;
  /** The job's disk transport setting (`auto` when absent). */
  transport?: Transport;
  /** Told which transport was chosen for the disk, and why, before the source is returned. */
  onChoice?(choice: DiskTransportChoice): void;
}

export interface DiskOpener {
  /** Open a disk of the VM as of `snapshot` through the job's transport. */
  open(vmRef: string, snapshot: SnapshotHandle, disk: SnapshotDisk, ctx?: DiskOpenContext): Promise<BlockSource>;
}

/** The part of a receiver session (transfer/contract.ts) a job uses. */
export type ReceiverService = Pick<ReceiverSession, 'listImages' | 'beginCycle' | 'setBandwidthMbps' | 'setCompression'>;
