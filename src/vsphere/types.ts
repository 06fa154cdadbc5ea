/** The facts vmlift reads from vCenter, as plain data. */
import type { MoRef } from './convert.ts';

export type ControllerType = 'pvscsi' | 'lsilogic' | 'lsilogic-sas' | 'buslogic' | 'scsi' | 'ide' | 'sata' | 'nvme' | 'unknown';

export interface DiskInfo {
  /** Device key (2000, 2001, …): what QueryChangedDiskAreas and VDDK call the disk. */
  key: number;
  label: string;
  controllerType: ControllerType;
  controllerBus: number;
  unitNumber: number;
  /** "scsi0:1", "ide0:0", "sata0:2", "nvme0:0": the extraConfig prefix of the disk. */
  busId: string;
  capacity: number;
  /** Backing type without the "BackingInfo" suffix: VirtualDiskFlatVer2, VirtualDiskRawDiskMappingVer1, … */
  backingType: string;
  /** "[datastore] folder/name.vmdk" */
  file: string;
  datastore: string | null;
  diskMode: string;
  /** RDM only: physicalMode or virtualMode. */
  compatibilityMode: string | null;
  changeId: string | null;
  /** `backing.uuid`: the virtual disk's own UUID, null when the backing has none. */
  uuid: string | null;
  /** extraConfig "<busId>.ctkEnabled" is TRUE */
  ctkEnabled: boolean;
  /**
   * Backing facts that say how the data is stored (all optional: absent on a flat base disk, or when
   * vCenter did not send them). `backing.deltaDiskFormat` of a delta disk: seSparseFormat,
   * redoLogFormat (VMFSsparse, or vsanSparse with the variant) or nativeFormat.
   */
  deltaDiskFormat?: string;
  /** `backing.deltaDiskFormatVariant`: vmfsSparseVariant, vsanSparseVariant. */
  deltaDiskFormatVariant?: string;
  /** `backing.parent` chain, nearest first, down to the base disk: the files a delta sits on. Its length is the chain depth. */
  parents?: string[];
  /** `backing.backingObjectId`: the vSAN or vVols object that holds the data (no flat file exists). */
  backingObjectId?: string;
  /** `backing.datastore`'s managed object id; `datastore` is then its name. */
  datastoreRef?: string;
  /** The datastore's `summary.type` (VMFS, NFS, NFS41, vsan, VVOL, …), where it was read (snapshot disks). */
  datastoreType?: string;
}

export interface SnapshotNode {
  ref: string;
  name: string;
  description: string;
  createTime: string;
  state: string;
  quiesced: boolean;
  children: SnapshotNode[];
}

export interface HostInfo { ref: string; name: string; version: string; build: string }

export interface VmInfo {
  ref: string;
  name: string;
  powerState: string;
  guestId: string;
  guestFullName: string;
  /** "vmx-13" */
  hardwareVersion: string;
  uuid: string;
  host: HostInfo | null;
  datacenter: string | null;
  /**
   * The VM-folder path inside its datacenter ("Prod/Web"; "" for the datacenter's vm folder itself;
   * null when vCenter did not say). For a vApp member, the root vApp's folder (src/vsphere/vm-folder.ts).
   * Set by the inventory pass (and fetchVm by name); absent where only one VM was read by ref.
   */
  folder?: string | null;
  /** The vApp holding the VM, outermost first ("shop" or "shop/tier"), or null. */
  vApp?: string | null;
  /** config.changeTrackingEnabled */
  changeTrackingEnabled: boolean;
  /** extraConfig ctkEnabled = TRUE */
  ctkEnabled: boolean;
  consolidationNeeded: boolean;
  /** Properties vCenter did not return for this VM (missingSet), e.g. config for lack of a privilege. */
  unreadable: { path: string; fault: string; privilege?: string }[];
  /** What kind of system VM this is (vCLS agent), or null: system VMs are no migration candidates. */
  systemVm: string | null;
  /** capability.changeTrackingSupported; null when vCenter did not say. */
  changeTrackingSupported: boolean | null;
  snapshots: SnapshotNode[];
  currentSnapshot: string | null;
  disks: DiskInfo[];
  /** Raw extraConfig keys that matter for CBT (ctkEnabled, scsiX:Y.ctkEnabled). */
  ctkConfig: Record<string, string>;
  /** config.hardware.numCPU, config.hardware.memoryMB, config.firmware ("bios" | "efi"); null when vCenter did not say. */
  numCpu?: number | null;
  memoryMB?: number | null;
  firmware?: string | null;
}

export interface SnapshotHandle { ref: string; name: string }

export type { MoRef };
