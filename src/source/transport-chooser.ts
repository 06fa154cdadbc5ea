/**
 * Opening one disk of a VMware VM (at a snapshot) through whichever transport works:
 * the job's setting, or VDDK, then NBD (an `nbdkit vddk` endpoint in front of VMware), then HTTP datastore.
 */
import type { BlockSource } from './types.ts';
import { UserError, errorMessage } from '../util/errors.ts';
import { silentLogger, type Logger } from '../util/log.ts';
import { flatExtentUrl } from '../util/datastore-url.ts';
import { HttpDatastoreSource, type HttpDatastoreOptions } from './http-datastore/index.ts';
import { NbdSource, type NbdSourceOptions } from './nbd/index.ts';
import { VddkSource, type VddkSourceOptions } from './vddk/index.ts';

export const VMWARE_TRANSPORTS = ['vddk', 'nbd', 'http-datastore'] as const;
export type VmwareTransport = (typeof VMWARE_TRANSPORTS)[number];

export interface VmwareDiskSpec {
  /** vCenter (or ESXi) host name, and HTTPS port when not 443. */
  server: string;
  port?: number;
  /** SHA-1 thumbprint as VDDK expects it, and SHA-256 for the HTTPS pin. */
  thumbprintSha1?: string;
  thumbprintSha256?: string;
  user: string;
  password?: string;
  /** The vSphere session cookie getter (VDDK session login, HTTP datastore). */
  cookie?: () => string | undefined;
  vm: string;
  snapshot?: string;
  /** The disk's backing file at the snapshot: "[datastore] folder/disk.vmdk". */
  diskPath: string;
  datacenter: string;
  /** An NBD export of this disk at this snapshot, e.g. from `nbdkit vddk` run by virt-v2v/Forklift. */
  nbdUri?: string;
  /** ESXi host of the VM, for the open-disks limit. */
  esxiHost?: string;
}

export interface OpenVmwareOptions {
  /** The job's disk transport; 'auto' (default) tries vddk, nbd, http-datastore in that order. */
  transport?: VmwareTransport | 'auto';
  vddk?: Partial<VddkSourceOptions>;
  nbd?: NbdSourceOptions;
  http?: Partial<HttpDatastoreOptions>;
  logger?: Logger;
}

export interface OpenedVmwareDisk {
  source: BlockSource;
  transport: VmwareTransport;
  /** Transports tried before the one used, with why each was passed over. */
  skipped: Array<{ transport: VmwareTransport; reason: string }>;
}

export async function openVmwareDisk(spec: VmwareDiskSpec, opts: OpenVmwareOptions = {}): Promise<OpenedVmwareDisk> {
  const log = opts.logger ?? silentLogger;
  const order: VmwareTransport[] = !opts.transport || opts.transport === 'auto' ? [...VMWARE_TRANSPORTS] : [opts.transport];
  const skipped: OpenedVmwareDisk['skipped'] = [];
  for (const t of order) {
    try {
      const source = await openWith(t, spec, opts, log);
      log.info({ transport: t, uri: source.uri, skipped }, 'disk transport chosen');
      return { source, transport: t, skipped };
    } catch (e) {
      if (order.length === 1) throw e;
      log.warn({ transport: t, err: errorMessage(e) }, 'disk transport not usable, trying the next');
      skipped.push({ transport: t, reason: errorMessage(e) });
    }
  }
  throw new UserError('SOURCE_NO_TRANSPORT', `no disk transport could open ${spec.diskPath} of ${spec.vm}: ` +
    skipped.map((s) => `${s.transport}: ${s.reason}`).join('; '),
  'fix the first transport\'s cause (VDDK library folder, an NBD endpoint, or the vCenter session), or set the job\'s transport explicitly');
}

async function openWith(t: VmwareTransport, spec: VmwareDiskSpec, opts: OpenVmwareOptions, log: Logger): Promise<BlockSource> {
  if (t === 'vddk') {
    const cookie = spec.cookie?.();
    const credentials = spec.password !== undefined ? { user: spec.user, password: spec.password }
      : cookie ? { cookie, user: spec.user } : undefined;
    if (!credentials) throw new UserError('VDDK_NO_CREDENTIALS', 'VDDK needs a password or a session cookie', 'log in to vCenter first');
    return VddkSource.open({
      transports: 'nbdssl:nbd', ...opts.vddk, logger: log,
      server: spec.server, port: spec.port, thumbprint: spec.thumbprintSha1, credentials,
      vm: spec.vm, snapshot: spec.snapshot, diskPath: spec.diskPath, esxiHost: spec.esxiHost,
    });
  }
  if (t === 'nbd') {
    if (!spec.nbdUri) throw new UserError('NBD_NO_ENDPOINT', 'no NBD endpoint is configured for this disk', 'run `nbdkit vddk ...` (or another NBD server) in front of the disk and give its URI');
    return NbdSource.open(spec.nbdUri, { ...opts.nbd, logger: log });
  }
  if (!spec.thumbprintSha256) throw new UserError('HTTP_DS_THUMBPRINT', 'HTTP datastore access needs the SHA-256 thumbprint of vCenter', 'pass the vCenter thumbprint');
  return HttpDatastoreSource.open({
    trust: { thumbprint: spec.thumbprintSha256 }, ...opts.http, logger: log,
    url: datastoreFlatUrl(spec), cookie: spec.cookie,
  });
}

/** https://server/folder/<dir>/<disk>-flat.vmdk?dcPath=..&dsName=.. for "[ds] dir/disk.vmdk". */
export function datastoreFlatUrl(spec: Pick<VmwareDiskSpec, 'server' | 'port' | 'datacenter' | 'diskPath'>): string {
  const host = spec.server.includes(':') && !spec.server.startsWith('[') ? `[${spec.server}]` : spec.server;
  return flatExtentUrl(`https://${host}${spec.port ? `:${spec.port}` : ''}`, spec.datacenter, spec.diskPath);
}
