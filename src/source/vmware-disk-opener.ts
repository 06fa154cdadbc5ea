/**
 * The per-disk transport of an agentless job: which reader opens one disk of a VM at a snapshot, and
 * why. `auto` takes VDDK when libvixDiskLib loads, else NBD through a server the connector starts
 * (nbd-server.ts), else the HTTP datastore only where it is safe (a flat extent: no delta, no vSAN or
 * vVols object). An explicit transport that cannot read the disk fails it with the cause and the fix.
 */
import type { BlockSource } from './types.ts';
import { UserError, errorMessage } from '../util/errors.ts';
import { silentLogger, type Logger } from '../util/log.ts';
import { HttpDatastoreSource, type HttpDatastoreOptions } from './http-datastore/index.ts';
import { VddkSource, isVddkNfcResourceError, loadVixDiskLib } from './vddk/index.ts';
import type { Availability, NbdServers } from './nbd-server.ts';
import { HTTP_REFUSAL_FIX, httpRefusal, type DiskBackingFacts } from './http-datastore/eligibility.ts';

export const DISK_TRANSPORTS = ['vddk', 'nbd', 'http'] as const;
export type DiskTransport = (typeof DISK_TRANSPORTS)[number];

export interface VmwareDiskRequest {
  /** Names the disk's NBD server (`<job>-<key>`). */
  jobId: string;
  /** VM managed object id (vm-42). */
  vm: string;
  /** Snapshot managed object id (snapshot-7). */
  snapshot: string;
  diskKey: number;
  /** The disk's backing file as the snapshot's config names it: "[ds] vm/vm.vmdk". */
  file: string;
  backing?: DiskBackingFacts;
  /** ESXi host of the VM (VDDK's open-disks limit). */
  esxiHost?: string;
  /** The datastore URL of the disk's flat extent (HTTP only; asked for only when HTTP is chosen). */
  flatUrl(): Promise<string>;
}

export interface VmwareDiskOpenerOptions {
  /** vCenter host name and HTTPS port (when not 443). */
  server: string;
  port?: number;
  user: string;
  password: string;
  /** The SHA-1 thumbprint of vCenter's certificate, "AA:BB:…", as VDDK and nbdkit vddk want it. */
  thumbprintSha1(): Promise<string>;
  vddk?: { libdir?: string; configFile?: string; transports?: string };
  /** NBD servers the connector may start; absent: no NBD. */
  nbd?: NbdServers;
  /** Session cookie, TLS trust and dispatcher for datastore reads. */
  http: Omit<HttpDatastoreOptions, 'url' | 'logger'>;
  maxReadSize: number;
  logger?: Logger;
}

export interface OpenedDisk { source: BlockSource; transport: DiskTransport; reason: string }

/** The job setting's names: `http-datastore` is the older name of `http`. */
export function normalizeTransport(t: string | undefined): DiskTransport | 'auto' {
  if (t === undefined || t === 'auto') return 'auto';
  if (t === 'http-datastore') return 'http';
  if ((DISK_TRANSPORTS as readonly string[]).includes(t)) return t as DiskTransport;
  throw new UserError('BAD_SETTING', `unknown disk transport ${JSON.stringify(t)}`, `use one of auto, ${DISK_TRANSPORTS.join(', ')}`);
}

/**
 * Why a disk cannot be read over the HTTP datastore (no flat extent file to GET), or null when it can.
 * Without a deltaDiskFormat from vCenter, a backing named `<disk>-00000N.vmdk` is taken for the delta
 * vSphere names so (docs/vsphere.md).
 */
export function httpUnsafeReason(b: DiskBackingFacts | undefined, file?: string): string | null {
  if (!b) return file && /-\d{6}\.vmdk$/.test(file) ? `delta disk (the snapshot's backing is ${file.replace(/^.*\//, '')}), no flat extent at this snapshot` : null;
  const ds = b.datastoreType?.toLowerCase();
  if (ds === 'vsan') return 'vSAN object, no flat file';
  if (ds === 'vvol') return 'vVols object, no flat file';
  if (b.backingObjectId) return `vSAN/vVols object ${b.backingObjectId}, no flat file`;
  if (b.deltaDiskFormat) return `delta disk ${b.deltaDiskFormat.replace(/Format$/, '')}, no flat extent at this snapshot`;
  if (b.parents?.length) return `delta disk on ${b.parents[0]}, no flat extent at this snapshot`;
  return httpUnsafeReason(undefined, file);
}

const VDDK_FIX = 'give the connector the VDDK folder: `vmlift connector init … --vddk-libdir DIR` (or VMLIFT_VDDK_LIBDIR), then restart it';

/** Opens disks of VMs at snapshots through the job's transport, choosing per disk under `auto`. */
export class VmwareDiskOpener {
  private vddkChecked: Availability | undefined;
  private readonly log: Logger;

  constructor(private readonly o: VmwareDiskOpenerOptions) {
    this.log = o.logger ?? silentLogger;
  }

  /** Whether libvixDiskLib loads from the configured folder (checked once). */
  vddkAvailable(): Availability {
    if (!this.vddkChecked) {
      const libdir = this.o.vddk?.libdir;
      if (!libdir) this.vddkChecked = { ok: false, reason: 'no VDDK libdir is configured (connector init --vddk-libdir, VMLIFT_VDDK_LIBDIR)' };
      else {
        try { this.vddkChecked = { ok: true, detail: `libvixDiskLib from ${loadVixDiskLib(libdir).file}` }; } catch (e) { this.vddkChecked = { ok: false, reason: errorMessage(e) }; }
      }
    }
    return this.vddkChecked;
  }

  async nbdAvailable(): Promise<Availability> {
    if (!this.o.nbd) return { ok: false, reason: 'no NBD server command is configured' };
    return this.o.nbd.available();
  }

  /** The transport for one disk and the reason; throws (with the cause and the fix) when none can read it. */
  async choose(wanted: DiskTransport | 'auto', req: Pick<VmwareDiskRequest, 'vm' | 'diskKey' | 'backing'> & { file?: string; snapshot?: string }): Promise<{ transport: DiskTransport; reason: string }> {
    const disk = `disk ${req.diskKey} of ${req.vm}`;
    const unsafe = httpUnsafeReason(req.backing, req.file);
    if (wanted === 'vddk') {
      const v = this.vddkAvailable();
      if (!v.ok) throw new UserError('VDDK_UNAVAILABLE', `${disk}: the job's transport is vddk, but ${v.reason}`, `${VDDK_FIX}; or set the job's transport to auto`);
      return { transport: 'vddk', reason: `the job's transport is vddk (${v.detail})` };
    }
    if (wanted === 'nbd') {
      const n = await this.nbdAvailable();
      if (!n.ok) {
        throw new UserError('NBD_NO_SERVER', `${disk}: the job's transport is nbd, but ${n.reason}`,
          'set an NBD server command in the connector config ("nbd": {"command": [...]}, docs/transports.md), install an nbdkit with the vddk plugin, or use --transport vddk');
      }
      return { transport: 'nbd', reason: `the job's transport is nbd (${n.detail})` };
    }
    if (wanted === 'http') {
      if (unsafe) {
        // The backing facts' own refusal (HTTP_DS_DELTA, HTTP_DS_OBJECT) names the disk as vCenter does.
        throw httpRefusal({ ...req.backing, key: req.diskKey, file: req.file }, req.snapshot ? { ref: req.snapshot } : undefined)
          ?? new UserError('HTTP_DS_DELTA', `${disk} cannot be read over the HTTP datastore: ${unsafe}`, HTTP_REFUSAL_FIX);
      }
      return { transport: 'http', reason: 'the job\'s transport is http (flat extent on the datastore)' };
    }
    const v = this.vddkAvailable();
    if (v.ok) return { transport: 'vddk', reason: `auto: ${v.detail}` };
    const n = await this.nbdAvailable();
    if (n.ok) return { transport: 'nbd', reason: `auto: no VDDK (${v.reason}); NBD through ${n.detail}` };
    if (!unsafe) return { transport: 'http', reason: `auto: no VDDK (${v.reason}), no NBD server (${n.reason}); flat extent, safe over HTTP` };
    throw new UserError('SOURCE_NO_TRANSPORT', `no transport can read ${disk}: vddk: ${v.reason}; nbd: ${n.reason}; http: ${unsafe}`, VDDK_FIX);
  }

  async open(req: VmwareDiskRequest, wanted: DiskTransport | 'auto' = 'auto'): Promise<OpenedDisk> {
    const { transport, reason } = await this.choose(wanted, req);
    this.log.debug({ vm: req.vm, snapshot: req.snapshot, diskKey: req.diskKey, transport, reason }, 'opening disk');
    return { source: await this.openWith(transport, req), transport, reason };
  }

  private async openWith(t: DiskTransport, req: VmwareDiskRequest): Promise<BlockSource> {
    const o = this.o;
    if (t === 'vddk') {
      return VddkSource.open({
        libdir: o.vddk?.libdir, configFile: o.vddk?.configFile, transports: o.vddk?.transports ?? 'nbdssl:nbd',
        server: o.server, port: o.port, thumbprint: await o.thumbprintSha1(), credentials: { user: o.user, password: o.password },
        vm: req.vm, snapshot: req.snapshot, diskPath: req.file, esxiHost: req.esxiHost, maxReadSize: o.maxReadSize, logger: this.log,
        // Jobs open disks through the per-host limiter (engine/limits.ts): NFC resource errors go up to it at
        // once, so it lowers the host's disk limit and backs off; retrying them in the source would hide them.
        retry: { passUp: isVddkNfcResourceError },
      });
    }
    if (t === 'nbd') {
      return o.nbd!.open({
        name: `${req.jobId}-${req.diskKey}`, password: o.password,
        values: {
          server: o.server, port: o.port && o.port !== 443 ? String(o.port) : undefined, user: o.user,
          thumbprint: await o.thumbprintSha1(), vm: req.vm, snapshot: req.snapshot, file: req.file,
          diskKey: String(req.diskKey), transports: o.vddk?.transports ?? 'nbdssl:nbd', libdir: o.vddk?.libdir,
        },
      });
    }
    return HttpDatastoreSource.open({ ...o.http, url: await req.flatUrl(), maxReadSize: o.maxReadSize, logger: this.log });
  }
}
