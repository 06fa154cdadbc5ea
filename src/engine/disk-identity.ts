/**
 * A disk's identity across cycles: its device key plus its backing UUID. A disk's position in the
 * sorted list is only where it sits in one image: each disk of a new image is built on the base
 * image's disk with the same identity (`baseDiskMapping`), never on the one at the same position
 * (otherwise one disk's changes would land on another disk's base). Images record the identities in
 * their meta (`diskIdentities`).
 */
import type { ImageInfo } from '../model/images.ts';
import type { SnapshotDisk } from './services.ts';

export interface DiskIdentity {
  key: number;
  /** `backing.uuid`; null when vCenter gave none. */
  uuid: string | null;
}

export function identityOf(d: SnapshotDisk): DiskIdentity {
  return { key: d.key, uuid: d.uuid };
}

function describe(id: DiskIdentity): string {
  return id.uuid ? `${id.key} (${id.uuid})` : String(id.key);
}

/**
 * The identities an image recorded, by position. Images written before identities were recorded
 * have only `diskKeys`: their UUIDs are unknown (`uuid: undefined`), and only keys can be compared.
 * Null when the image records neither.
 */
export function recordedIdentities(image: ImageInfo): (DiskIdentity | { key: number; uuid: undefined })[] | null {
  const ids = image.meta.diskIdentities;
  if (Array.isArray(ids)) {
    return ids.map((x) => ({ key: Number((x as DiskIdentity).key), uuid: typeof (x as DiskIdentity).uuid === 'string' ? (x as DiskIdentity).uuid : null }));
  }
  const keys = image.meta.diskKeys;
  if (Array.isArray(keys)) return keys.map((k) => ({ key: Number(k), uuid: undefined }));
  return null;
}

/**
 * Why the disks at `current` are not the disks of the base image position by position ("disks
 * changed: …", naming what was removed, added or moved), or null when every position holds the
 * same disk. An image that recorded no identities cannot be checked: null when the counts agree.
 */
export function diskListChange(base: ReturnType<typeof recordedIdentities>, current: readonly DiskIdentity[], baseDiskCount: number): string | null {
  if (!base) return baseDiskCount === current.length ? null : `disks changed: ${baseDiskCount} in the previous image, ${current.length} now`;
  const same = (a: { key: number; uuid: string | null | undefined }, b: DiskIdentity) => a.key === b.key && (a.uuid === undefined || a.uuid === b.uuid);
  if (base.length === current.length && base.every((b, i) => same(b, current[i]!))) return null;
  const parts: string[] = [];
  for (const [i, b] of base.entries()) {
    const j = current.findIndex((c) => same(b, c));
    if (j < 0) parts.push(`disk ${describe({ key: b.key, uuid: b.uuid ?? null })} removed`);
    else if (j !== i) parts.push(`disk ${describe(current[j]!)} moved from position ${i} to ${j}`);
  }
  for (const c of current) {
    if (!base.some((b) => same(b, c))) parts.push(`disk ${describe(c)} added`);
  }
  return `disks changed: ${parts.join(', ')}`;
}

/**
 * Per current disk, the position in the base image of the disk with the same identity, or null for
 * a disk the base does not have (a new disk). An image that recorded no identities is taken by
 * position when the counts agree; otherwise no disk is matched.
 */
export function baseDiskMapping(base: ReturnType<typeof recordedIdentities>, current: readonly DiskIdentity[], baseDiskCount: number): (number | null)[] {
  if (!base) return current.map((_, i) => (baseDiskCount === current.length ? i : null));
  const used = new Set<number>();
  return current.map((c) => {
    const j = base.findIndex((b, k) => !used.has(k) && b.key === c.key && (b.uuid === undefined || b.uuid === c.uuid));
    if (j < 0) return null;
    used.add(j);
    return j;
  });
}

/** The store's default: disk n from the base's disk n, when the base has one. */
export function positionalMapping(disks: number, baseDiskCount: number): (number | null)[] {
  return Array.from({ length: disks }, (_, i) => (i < baseDiskCount ? i : null));
}
