/**
 * Wires the real parts into the engine's services: the vSphere client (src/vsphere), the disk
 * transports (src/source) and the wire sender (src/transfer). The only place that knows them all.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { VCenter, resolveConnection, makeDispatcher, unreadableError, type TrustMode } from '../vsphere/index.ts';
import { fetchThumbprints, normalizeThumbprint } from '../vsphere/tls.ts';
import { HttpDatastoreSource, assertHttpReadable } from '../source/http-datastore/index.ts';
import { NbdServers, reapLeftoverNbdServers } from '../source/nbd-server.ts';
import { VmwareDiskOpener, normalizeTransport } from '../source/vmware-disk-opener.ts';
import { shutdownVddk } from '../source/vddk/index.ts';
import { Sender, type SenderOptions } from '../transfer/sender.ts';
import { UserError } from '../util/errors.ts';
import { readSecret } from '../util/secret.ts';
import type { JobRecord } from '../state/types.ts';
import type { DiskOpener, DiskOpenContext, SnapshotDisk, SnapshotHandle, VCenterService } from '../engine/services.ts';
import type { JobServices } from '../engine/jobs.ts';
import type { DrillService } from '../engine/drills.ts';
import { LimitedDiskOpener } from '../engine/limits.ts';
import { askReceivers, type ReceiverFiguresResponse } from '../engine/receiver-figures.ts';
import type { ConnectorConfig } from './connector-config.ts';
import { toSnapshotDisk } from './snapshot-disk.ts';

export interface Wiring {
  vc: VCenter;
  connect(job: JobRecord): Promise<JobServices>;
  resolveVm(nameOrRef: string): Promise<{ vmRef: string; name: string; diskKeys?: number[] }>;
  /** vCenter's preflight of a VM (`workgroup start --dry-run`). */
  preflight(vmRef: string): ReturnType<VCenterService['preflight']>;
  images(sourceId: string): Promise<unknown[]>;
  /** The receiver's space and dedup ratio (GET /v1/receivers). */
  receivers(): Promise<ReceiverFiguresResponse>;
  /** Drills on the receiver, over each source's own credential. */
  drills: DrillService;
  close(): Promise<void>;
}

/** The VCenterService over one logged-in vCenter session (re-login is the session's job). */
export function vcenterService(vc: VCenter): VCenterService & { datacenterOf(vmRef: string): Promise<string> } {
  const hosts = new Map<string, string>();
  const datacenters = new Map<string, string>();
  const facts = async (vmRef: string) => {
    const vm = await vc.vm(vmRef);
    hosts.set(vmRef, vm.host?.ref ?? 'unknown-host');
    if (vm.datacenter) datacenters.set(vmRef, vm.datacenter);
    return vm;
  };
  return {
    preflight: async (vmRef) => (await vc.preflight(vmRef)).checks,
    ensureCbt: async (vmRef) => ({ changed: (await vc.enableCbt(vmRef)).changed }),
    hostOf: async (vmRef) => hosts.get(vmRef) ?? (await facts(vmRef)).host?.ref ?? 'unknown-host',
    sweepSnapshots: async (vmRef, prefix, keep) => (await vc.sweepSnapshots(vmRef, prefix, { keep })).removed.length,
    findSnapshot: async (vmRef, name) => { const s = await vc.findSnapshot(vmRef, name); return s ? { ref: s.ref, name: s.name } : null; },
    createSnapshot: (vmRef, name, o) => vc.createSnapshot(vmRef, name, { quiesce: o.quiesce, description: 'vmlift sync cycle; removed when the cycle ends' }, { onProgress: o.onProgress }),
    snapshotDisks: async (_vmRef, s) => (await vc.snapshotDisks(s.ref)).map(toSnapshotDisk),
    changedAreas: async (vmRef, s, d, changeId) => (await vc.changedAreas(vmRef, s.ref, d.key, changeId, d.capacity)).areas,
    removeSnapshot: async (vmRef, s, o) => { await vc.removeSnapshot(vmRef, s.ref, { onProgress: o?.onProgress }); },
    vmHardware: async (vmRef) => {
      const vm = await facts(vmRef);
      if (!vm.numCpu || !vm.memoryMB) return null;
      return { cpus: vm.numCpu, memoryMiB: vm.memoryMB, firmware: vm.firmware === 'efi' ? 'uefi' : 'bios', guestId: vm.guestId };
    },
    datacenterOf: async (vmRef) => {
      if (!datacenters.has(vmRef)) {
        // One inventory pass (constant round trips) learns the datacenter of every VM at once.
        for (const vm of (await vc.inventory()).vms) if (vm.datacenter) datacenters.set(vm.ref, vm.datacenter);
      }
      const dc = datacenters.get(vmRef);
      if (!dc) throw new UserError('VC_NO_DATACENTER', `cannot tell the datacenter of ${vmRef}`, 'check that the VM and its datastore still exist in vCenter');
      return dc;
    },
  };
}

/**
 * For datastore readers whose cookie got a 401/403 (the session ended): one re-login for all the reads
 * that met it; a read that sent an older cookie than the live one just retries.
 */
function cookieRefresher(vc: VCenter): (stale: string | undefined) => Promise<void> {
  let relogin: Promise<void> | undefined;
  return async (stale) => {
    if (stale !== vc.session.cookie) return;
    await (relogin ??= vc.session.relogin().then(() => undefined).finally(() => { relogin = undefined; }));
  };
}

/** Reads a snapshot's disk through the datastore's /folder URL (Range GETs, session cookie). */
export function httpDiskOpener(vc: VCenter, port: ReturnType<typeof vcenterService>, trust: TrustMode, maxReadSize: number, logger: Logger): DiskOpener {
  const dispatcher = makeDispatcher(trust, 120_000);
  const refreshCookie = cookieRefresher(vc);
  return {
    async open(vmRef: string, s: SnapshotHandle, disk: SnapshotDisk) {
      assertHttpReadable(disk, s);
      if (!disk.file) throw new UserError('NO_DISK_FILE', `disk ${disk.key} of ${vmRef} has no backing file`, 'check the VM in vCenter');
      const { url } = vc.diskUrl({ file: disk.file }, await port.datacenterOf(vmRef));
      return HttpDatastoreSource.open({
        url, cookie: () => vc.session.cookie, refreshCookie, dispatcher,
        trust: 'thumbprint' in trust ? { thumbprint: trust.thumbprint } : { insecure: true },
        maxReadSize, logger,
      });
    },
  };
}

/** Where and how the connector reads disks: VDDK's folder, and its NBD server command and folder. */
export interface TransportSettings {
  vddkLibdir?: string;
  vddkConfigFile?: string;
  /** VDDK transport modes, e.g. "nbdssl:nbd" (default), "hotadd:nbdssl:nbd". */
  vddkTransports?: string;
  /** The NBD server command template (nbd-server.ts DEFAULT_NBD_COMMAND when absent). */
  nbdCommand?: string[];
  /** The connector's folder for NBD sockets, pid and secret files (`<home>/nbd`). */
  nbdDir: string;
}

/** The SHA-1 thumbprint of vCenter's certificate, checked against the pinned one (VDDK and nbdkit vddk want SHA-1). */
function sha1Thumbprint(serverUrl: string, trust: TrustMode): () => Promise<string> {
  let p: Promise<string> | undefined;
  return () => p ??= (async () => {
    const u = new URL(serverUrl);
    const t = await fetchThumbprints(u.hostname, Number(u.port || 443));
    if ('thumbprint' in trust) {
      const pin = normalizeThumbprint(trust.thumbprint);
      const got = normalizeThumbprint(pin.length === 40 ? t.sha1 : t.sha256);
      if (got !== pin) throw new UserError('VC_THUMBPRINT', `the certificate of ${u.hostname} does not match the pinned thumbprint`, 'check the connector\'s vcenter.thumbprint (it changes when the certificate is renewed)');
    }
    return t.sha1;
  })();
}

/**
 * The engine's DiskOpener over the per-disk transport choice (source/vmware-disk-opener.ts): the job's
 * transport from the open context, VDDK or an NBD server the connector starts or the HTTP datastore.
 */
export function transportDiskOpener(vc: VCenter, port: ReturnType<typeof vcenterService>, conn: { user: string; password: string; trust: TrustMode },
  t: TransportSettings, maxReadSize: number, logger: Logger): DiskOpener & { opener: VmwareDiskOpener; nbd: NbdServers; close(): Promise<void> } {
  const u = new URL(vc.session.url);
  const nbd = new NbdServers({ dir: t.nbdDir, command: t.nbdCommand, logger, nbd: { maxReadSize } });
  const opener = new VmwareDiskOpener({
    server: u.hostname, port: u.port ? Number(u.port) : undefined, user: conn.user, password: conn.password,
    thumbprintSha1: sha1Thumbprint(vc.session.url, conn.trust),
    vddk: { libdir: t.vddkLibdir ?? process.env.VMLIFT_VDDK_LIBDIR, configFile: t.vddkConfigFile, transports: t.vddkTransports },
    nbd,
    http: {
      cookie: () => vc.session.cookie, refreshCookie: cookieRefresher(vc), dispatcher: makeDispatcher(conn.trust, 120_000),
      trust: 'thumbprint' in conn.trust ? { thumbprint: conn.trust.thumbprint } : { insecure: true },
    },
    maxReadSize, logger,
  });
  return {
    opener, nbd,
    async open(vmRef: string, s: SnapshotHandle, disk: SnapshotDisk, ctx?: DiskOpenContext) {
      if (!disk.file) throw new UserError('NO_DISK_FILE', `disk ${disk.key} of ${vmRef} has no backing file`, 'check the VM in vCenter');
      const file = disk.file;
      const r = await opener.open({
        jobId: ctx?.jobId ?? vmRef, vm: vmRef, snapshot: s.ref, diskKey: disk.key, file, backing: disk,
        esxiHost: await port.hostOf(vmRef), flatUrl: async () => vc.diskUrl({ file }, await port.datacenterOf(vmRef)).url,
      }, normalizeTransport(ctx?.transport));
      ctx?.onChoice?.({ transport: r.transport, reason: r.reason });
      return r.source;
    },
    async close() { await nbd.closeAll(); },
  };
}

/** A job's services: the given vCenter and disk readers, and a sender to the receiver for the job's source. */
export async function senderJobServices(vcenter: VCenterService, disks: DiskOpener, opts: SenderOptions): Promise<JobServices> {
  const receiver = await Sender.connect(opts);
  return {
    vcenter, disks, receiver,
    async removeImages() {
      for (const img of await receiver.listImages()) await receiver.deleteImage(img.imageId);
    },
    close: () => receiver.close(),
  };
}

/** FINGERPRINT_MISMATCH's fix in the connector: the command that pins the receiver's new certificate. */
export function acceptPinCommand(home: string): (presented: string) => string {
  return (fp) => `\`vmlift connector set --home ${home} --fingerprint ${fp}\`, then restart the connector`;
}

export async function createWiring(home: string, config: ConnectorConfig, logger: Logger): Promise<Wiring> {
  const conn = await resolveConnection({
    server: config.vcenter.server, user: config.vcenter.user, passwordFile: config.vcenter.passwordFile,
    thumbprint: config.vcenter.thumbprint, insecure: config.vcenter.insecure,
  }, { warn: (m) => logger.warn(m) });
  const vc = await VCenter.connect({ ...conn, logger });
  const port = vcenterService(vc);
  const nbdDir = join(home, 'nbd');
  await reapLeftoverNbdServers(nbdDir, logger);
  const transports = transportDiskOpener(vc, port, conn, {
    vddkLibdir: config.vddkLibdir, vddkConfigFile: config.vddkConfigFile, vddkTransports: config.vddkTransports,
    nbdCommand: config.nbd?.command, nbdDir,
  }, config.maxReadSize, logger);
  const disks = new LimitedDiskOpener(transports, port.hostOf,
    { perHost: config.limits.disksPerHost, overall: config.limits.disksOverall }, { logger });
  const code = await readSecret({ file: config.receiver.codeFile, what: 'activation code' });
  const proxyPassword = await readSecret({ file: config.receiver.proxyPasswordFile, what: 'proxy password' });

  const senderOptions = (job: Pick<JobRecord, 'sourceId' | 'name' | 'settings'>): SenderOptions => ({
    receiver: config.receiver.address, dataPort: config.receiver.dataPort, fingerprint: config.receiver.fingerprint,
    credentialFile: join(home, 'credentials', `${job.sourceId}.json`), activationCode: code,
    sourceId: job.sourceId, sourceLabel: job.name, proxy: config.receiver.proxy, proxyPassword,
    compression: job.settings.compression, bandwidthMbps: job.settings.bandwidthMbps, checksum: job.settings.checksum,
    logger: logger.child({ sourceId: job.sourceId }), acceptPin: acceptPinCommand(home),
    ...(config.receiver.windowMib ? { windowBytes: Math.max(1, config.receiver.windowMib) * 1024 * 1024 } : {}),
  });

  // One control session per source for drills, opened on first use (the credential is the source's own).
  const drillSessions = new Map<string, Promise<Sender>>();
  const drillSession = (sourceId: string): Promise<Sender> => {
    let s = drillSessions.get(sourceId);
    if (!s) {
      s = Sender.connect({
        receiver: config.receiver.address, fingerprint: config.receiver.fingerprint, proxy: config.receiver.proxy, proxyPassword,
        credentialFile: join(home, 'credentials', `${sourceId}.json`), activationCode: code, sourceId,
        compression: 0, bandwidthMbps: 0, checksum: false, logger,
      });
      s.catch(() => drillSessions.delete(sourceId));
      drillSessions.set(sourceId, s);
    }
    return s;
  };

  return {
    vc,
    connect: (job) => senderJobServices(port, disks, senderOptions(job)),
    drills: {
      start: async (sourceId, imageId) => (await drillSession(sourceId)).control.startDrill(imageId === undefined ? {} : { imageId }),
      get: async (sourceId, drillId) => (await drillSession(sourceId)).control.drill(drillId),
      screenshot: async (sourceId, drillId) => (await drillSession(sourceId)).control.drillScreenshot(drillId),
    },
    preflight: (vmRef) => port.preflight(vmRef),
    async resolveVm(nameOrRef) {
      if (!nameOrRef) throw new UserError('NO_VM', 'no VM given', 'pass --vm NAME (or its moref, vm-42)');
      const vm = await vc.vm(nameOrRef);
      if (vm.systemVm) {
        throw new UserError('SYSTEM_VM', `${vm.name} (${vm.ref}) is ${vm.systemVm}: vSphere runs it for itself, it is no migration candidate`,
          'pick an application VM; `vmlift vc ls` marks system VMs');
      }
      if (vm.unreadable?.length) throw unreadableError(vm.name, vm.name, vm.unreadable);
      return { vmRef: vm.ref, name: vm.name, diskKeys: vm.disks.map((d) => d.key) };
    },
    async images(sourceId) {
      const s = await Sender.connect({
        receiver: config.receiver.address, fingerprint: config.receiver.fingerprint,
        credentialFile: join(home, 'credentials', `${sourceId}.json`), activationCode: code, sourceId,
        compression: 0, bandwidthMbps: 0, checksum: false, logger, acceptPin: acceptPinCommand(home),
      });
      try { return await s.listImages(); } finally { await s.close(); }
    },
    receivers: () => askReceivers([{
      address: config.receiver.address, fingerprint: config.receiver.fingerprint, credentialsDir: join(home, 'credentials'), activationCode: code,
      proxy: config.receiver.proxy, proxyPassword, acceptPin: acceptPinCommand(home),
    }], logger),
    async close() {
      for (const s of drillSessions.values()) await s.then((x) => x.close(), () => undefined);
      disks.close();
      await transports.close().catch(() => undefined);
      shutdownVddk();
      await vc.close();
    },
  };
}
