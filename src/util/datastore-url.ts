/**
 * Datastore file URLs as vCenter (and ESXi) serve them under /folder, to read a disk's flat extent
 * with Range GETs and the session cookie. vsphere/ (VCenter.diskUrl) and source/ (transport-chooser.ts) both
 * build them; the rules are pure, so they live here, below both.
 */
import { UserError } from './errors.ts';

export interface DatastorePath { datastore: string; path: string }

/** "[ds1] vm/vm.vmdk" → { datastore: 'ds1', path: 'vm/vm.vmdk' } */
export function parseDatastorePath(p: string): DatastorePath {
  const m = /^\[([^\]]+)\]\s*(.+)$/.exec(p.trim());
  if (!m) throw new UserError('HTTP_DS_PATH', `"${p}" is not a datastore path`, 'use "[datastore] folder/disk.vmdk"');
  return { datastore: m[1]!, path: m[2]! };
}

/**
 * The flat extent of a disk: a descriptor vm.vmdk → vm-flat.vmdk; a name that already is the flat
 * extent stays as it is. A snapshot delta (vm-000001.vmdk) has no flat extent on vSphere: its -flat
 * URL then answers 404, and the http-datastore source, which reads the descriptor beside a -flat
 * URL first, refuses the delta by that descriptor (HTTP_DS_SPARSE). The HTTP opener refuses a delta
 * earlier, from the snapshot's backing facts (source/http-datastore/eligibility.ts).
 */
export function flatExtentPath(path: string): string {
  return path.replace(/(?<!-flat)\.vmdk$/i, '-flat.vmdk');
}

/** https://host[:port]/folder/<path>?dcPath=<dc>&dsName=<ds>; `base` is any URL of the server (its origin is kept). */
export function datastoreUrl(base: string, dcPath: string, file: DatastorePath): string {
  const path = file.path.split('/').map(encodeURIComponent).join('/');
  return `${new URL(base).origin}/folder/${path}?dcPath=${encodeURIComponent(dcPath)}&dsName=${encodeURIComponent(file.datastore)}`;
}

/** The URL of the flat extent of `diskFile` ("[ds] dir/disk.vmdk", as vSphere names a disk's backing). */
export function flatExtentUrl(base: string, dcPath: string, diskFile: string): string {
  const file = parseDatastorePath(diskFile);
  return datastoreUrl(base, dcPath, { datastore: file.datastore, path: flatExtentPath(file.path) });
}
