/** The engine's SnapshotDisk of a vSphere DiskInfo read from a snapshot's config: identity, changeId and the backing facts. */
import type { DiskInfo } from '../vsphere/index.ts';
import type { SnapshotDisk } from '../engine/services.ts';

export function toSnapshotDisk(d: DiskInfo): SnapshotDisk {
  const out: SnapshotDisk = { key: d.key, label: d.label, capacity: d.capacity, changeId: d.changeId, uuid: d.uuid, file: d.file };
  if (d.deltaDiskFormat) out.deltaDiskFormat = d.deltaDiskFormat;
  if (d.deltaDiskFormatVariant) out.deltaDiskFormatVariant = d.deltaDiskFormatVariant;
  if (d.parents?.length) out.parents = d.parents;
  if (d.backingObjectId) out.backingObjectId = d.backingObjectId;
  if (d.datastoreRef) out.datastoreRef = d.datastoreRef;
  if (d.datastore) out.datastore = d.datastore;
  if (d.datastoreType) out.datastoreType = d.datastoreType;
  return out;
}
