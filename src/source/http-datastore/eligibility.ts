/**
 * Whether the HTTP datastore reader can read a disk as of a snapshot, decided from the backing facts
 * vCenter gives for the snapshot's disk, before any byte is read. /folder serves datastore files; the
 * reader reads one flat extent. That exists only for a base disk on VMFS or NFS. A delta (the
 * snapshot is not the first in the chain: a backup product's snapshot, a linked clone, a failed
 * consolidation) spreads its data over seSparse or redo-log files, and a vSAN or vVols disk is an
 * object with a descriptor and no extent file at all.
 */
import { UserError } from '../../util/errors.ts';

/** What the snapshot's config says of a disk's backing (the engine's SnapshotDisk has these fields). */
export interface DiskBackingFacts {
  key?: number;
  /** "[datastore] vm/vm-000001.vmdk" */
  file?: string;
  deltaDiskFormat?: string;
  deltaDiskFormatVariant?: string;
  /** The parent chain, nearest first. */
  parents?: string[];
  backingObjectId?: string;
  /** The datastore's summary.type: VMFS, NFS, NFS41, vsan, vsanD, VVOL, … */
  datastoreType?: string;
}

export const HTTP_REFUSAL_FIX = 'use --transport vddk or nbd, or set the VDDK libdir: connector init --vddk-libdir DIR';

const OBJECT_STORES: Record<string, string> = { vsan: 'vSAN', vsand: 'vSAN', vvol: 'vVols' };

/** Undefined when the disk is a flat base disk the reader can GET; otherwise the refusal, naming the cause and the fix. */
export function httpRefusal(d: DiskBackingFacts, snapshot?: { name?: string; ref?: string }): UserError | undefined {
  const disk = d.file ? `disk ${d.file}` : `disk ${d.key ?? '?'}`;
  const store = OBJECT_STORES[(d.datastoreType ?? '').toLowerCase()];
  if (store) {
    const obj = d.backingObjectId ? ` (object ${d.backingObjectId})` : '';
    return new UserError('HTTP_DS_OBJECT', `${disk} is a ${store} object${obj}, no flat file: the HTTP datastore transport cannot read it`, HTTP_REFUSAL_FIX);
  }
  if (d.backingObjectId) {
    return new UserError('HTTP_DS_OBJECT', `${disk} is stored as object ${d.backingObjectId} (vSAN or vVols), no flat file: the HTTP datastore transport cannot read it`, HTTP_REFUSAL_FIX);
  }
  if (d.deltaDiskFormat || d.parents?.length) {
    const fmt = d.deltaDiskFormat ? ` (${d.deltaDiskFormat}${d.deltaDiskFormatVariant ? `, ${d.deltaDiskFormatVariant}` : ''})` : '';
    const snap = snapshot?.name ? ` of snapshot ${snapshot.name}` : snapshot?.ref ? ` of snapshot ${snapshot.ref}` : '';
    const depth = d.parents?.length ? `, on ${d.parents[0]}${d.parents.length > 1 ? ` and ${d.parents.length - 1} more` : ''}` : '';
    return new UserError('HTTP_DS_DELTA',
      `${disk} is a delta disk${fmt}${snap}${depth}: an earlier snapshot is still in the chain, and a delta has no flat file the HTTP datastore transport could read`,
      HTTP_REFUSAL_FIX);
  }
  return undefined;
}

/** Throws the refusal of `httpRefusal` (for the HTTP opener: one call before it opens anything). */
export function assertHttpReadable(d: DiskBackingFacts, snapshot?: { name?: string; ref?: string }): void {
  const refused = httpRefusal(d, snapshot);
  if (refused) throw refused;
}
