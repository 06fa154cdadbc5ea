/** Datastore HTTP access (vCenter's /folder): the URL of a disk's flat file, read with the session cookie. */

export interface DatastorePath { datastore: string; path: string }

/** "[ds1] vm/vm.vmdk" → { datastore: 'ds1', path: 'vm/vm.vmdk' } */
export function parseDatastorePath(p: string): DatastorePath {
  const m = /^\[([^\]]+)\]\s*(.*)$/.exec(p.trim());
  if (!m) throw new Error(`"${p}" is not a datastore path ([datastore] folder/file)`);
  return { datastore: m[1]!, path: m[2]! };
}

/** The flat extent of a monolithic flat descriptor: vm.vmdk → vm-flat.vmdk. */
export function flatExtentPath(descriptor: string): string {
  return descriptor.replace(/\.vmdk$/i, '-flat.vmdk');
}

/** https://vc/folder/<path>?dcPath=<dc>&dsName=<ds>, as vCenter serves datastore files. */
export function datastoreUrl(sdkUrl: string, dcPath: string, file: DatastorePath): string {
  const u = new URL(sdkUrl);
  const path = file.path.split('/').map(encodeURIComponent).join('/');
  return `${u.origin}/folder/${path}?dcPath=${encodeURIComponent(dcPath)}&dsName=${encodeURIComponent(file.datastore)}`;
}
