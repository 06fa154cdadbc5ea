/** The agentless engine wired to real parts: the lab vCenter, an in-process receiver, a SQLite state file. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { startLab, type Lab } from '../../lab/lab.ts';
import { startTestReceiver, type TestRx } from '../transfer/helpers.ts';
import { targetDrillSteps } from '../../src/cli/drill-steps.ts';
import type { DrillService } from '../../src/engine/drills.ts';
import type { Sender } from '../../src/transfer/sender.ts';
import { VCenter } from '../../src/vsphere/index.ts';
import { vcenterService, httpDiskOpener, senderJobServices } from '../../src/cli/wiring.ts';
import { LimitedDiskOpener, type NfcBackoffPolicy } from '../../src/engine/limits.ts';
import { JobEngine, type EngineOptions } from '../../src/engine/jobs.ts';
import { openStateStore } from '../../src/state/sqlite.ts';
import { resolveSettings } from '../../src/engine/settings.ts';
import type { JobSettings, StateStore } from '../../src/state/types.ts';
import type { DiskOpener, VCenterService } from '../../src/engine/services.ts';
import { silentLogger } from '../../src/util/log.ts';
import type { SenderOptions } from '../../src/transfer/sender.ts';
import type { AgentCycles } from '../../src/engine/agent-source.ts';

export const MiB = 1 << 20;

export interface EngineRig {
  /** The connector-side drill service over the rig's receiver (drills need `startRig({ drills: true })`). */
  drillService: DrillService;
  lab: Lab;
  rx: TestRx;
  vc: VCenter;
  state: StateStore;
  engine: JobEngine;
  port: ReturnType<typeof vcenterService>;
  /** Hooks a test may set to act between the engine's vCenter calls (e.g. guest writes after the snapshot). */
  hooks: { afterSnapshot?: (vmRef: string) => Promise<void>; beforeRemoveSnapshot?: (vmRef: string) => Promise<void> };
  counters: { snapshotsCreated: number; diskOpens: number };
  /** The per-host and overall disk limits the engine opens disks through. */
  limiter: LimitedDiskOpener;
  close(): Promise<void>;
}

/** Builds the rig's disk opener instead of the HTTP one (e.g. the per-disk transport opener); its close runs with the rig's. */
export type RigOpener = (a: { vc: VCenter; port: ReturnType<typeof vcenterService>; lab: Lab; dir: string }) => DiskOpener & { close?(): Promise<void> };

export async function startRig(o: {
  vms?: number; diskMb?: number; esx?: boolean; vddkMap?: boolean; guest?: boolean; retry?: { attempts: number; baseDelayMs: number; maxDelayMs: number }; opener?: RigOpener; nfc?: Partial<NfcBackoffPolicy>;
  /** The folder of the state database (default: the rig's temp folder), e.g. a small filesystem. */
  stateDir?: string;
  /** The logger of the per-host disk limiter (NFC backoff and read-size lines; default silent). */
  limiterLogger?: import('pino').Logger;
  /** Reach the lab through another address (e.g. a fault proxy): gets the lab's URL, gives the one to use. */
  labUrl?: (url: string) => Promise<string>;
  /** The vCenter session's timeout (default 30 s). */
  vcTimeoutMs?: number;
  /** Sender options of the jobs over the rig's (e.g. a proxy's address and data port, timeouts). */
  sender?: (rx: TestRx) => Promise<Partial<SenderOptions>>;
  /** The receiver runs drills (inspect, convert, boot-test). */
  drills?: boolean;
  /** Agent sources of the engine (EngineOptions.agents), made once the receiver runs. */
  agents?: (rx: TestRx) => Promise<AgentCycles>;
  /** More engine options (e.g. the clock bandwidth windows are read on). */
  engine?: Pick<EngineOptions, 'bandwidthClock' | 'bandwidthPollMs'>;
} = {}): Promise<EngineRig> {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-engine-'));
  const lab = await startLab({ dir: join(dir, 'lab'), vms: o.vms ?? 0, diskMb: o.diskMb ?? 64, esx: o.esx, vddkMap: o.vddkMap, guest: o.guest });
  // Drills with the real steps (libguestfs, virt-v2v, QEMU), as `receiver serve` wires them.
  const rx = await startTestReceiver(o.drills ? { drills: { steps: targetDrillSteps(), bootTimeoutSeconds: 900 } } : {});
  const vc = await VCenter.connect({ server: o.labUrl ? await o.labUrl(lab.url) : lab.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint }, timeoutMs: o.vcTimeoutMs ?? 30_000 });
  const senderExtra = o.sender ? await o.sender(rx) : {};
  const port = vcenterService(vc);
  const hooks: EngineRig['hooks'] = {};
  const counters = { snapshotsCreated: 0, diskOpens: 0 };
  const hooked: VCenterService = {
    ...port,
    async createSnapshot(vmRef, name, opts) {
      const s = await port.createSnapshot(vmRef, name, opts);
      counters.snapshotsCreated++;
      await hooks.afterSnapshot?.(vmRef);
      return s;
    },
    async removeSnapshot(vmRef, snapshot, opts) {
      await hooks.beforeRemoveSnapshot?.(vmRef);
      return port.removeSnapshot(vmRef, snapshot, opts);
    },
  };
  const http = o.opener ? o.opener({ vc, port, lab, dir }) : httpDiskOpener(vc, port, { thumbprint: lab.thumbprint }, 2 * MiB, silentLogger);
  const disks = new LimitedDiskOpener({ open: (...a) => { counters.diskOpens++; return http.open(...a); } }, port.hostOf, { perHost: 8, overall: 32 }, { nfc: o.nfc, logger: o.limiterLogger });
  const state = openStateStore(join(o.stateDir ?? dir, 'state.db'));
  const agents = o.agents ? await o.agents(rx) : undefined;
  const engine = new JobEngine({
    state, logger: silentLogger, retry: o.retry ?? { attempts: 3, baseDelayMs: 50, maxDelayMs: 200 }, ...o.engine,
    ...(agents ? { agents } : {}),
    connect: (job) => senderJobServices(hooked, disks, rx.senderOpts(job.sourceId, { compression: job.settings.compression, checksum: job.settings.checksum, ...senderExtra })),
  });
  // The connector's side of drills: each source's own control session, as cli/wiring.ts does it.
  const drillSessions = new Map<string, Promise<Sender>>();
  const session = (sourceId: string): Promise<Sender> => {
    if (!drillSessions.has(sourceId)) drillSessions.set(sourceId, rx.sender(sourceId));
    return drillSessions.get(sourceId)!;
  };
  const drillService: DrillService = {
    start: async (sourceId, imageId) => (await session(sourceId)).control.startDrill(imageId === undefined ? {} : { imageId }),
    get: async (sourceId, drillId) => (await session(sourceId)).control.drill(drillId),
    screenshot: async (sourceId, drillId) => (await session(sourceId)).control.drillScreenshot(drillId),
  };
  return {
    lab, rx, vc, state, engine, port, hooks, counters, limiter: disks, drillService,
    async close() {
      await engine.drain(true);
      for (const x of drillSessions.values()) await x.then((c) => c.close(), () => undefined);
      disks.close();
      await (http as { close?(): Promise<void> }).close?.();
      state.close();
      await vc.close().catch(() => undefined);
      await rx.close();
      await lab.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export function settings(patch: Partial<JobSettings> = {}): JobSettings {
  return resolveSettings({ intervalSeconds: 3600, maxImages: 3, compression: 3, checksum: true }, patch);
}

/** SHA-256 of a VM disk's live content (what a snapshot taken now will hold). */
export async function liveSha(lab: Lab, vm: string, key: number, capacity: number): Promise<string> {
  const h = createHash('sha256');
  for (let off = 0; off < capacity; off += 8 * MiB) h.update(await lab.read(vm, key, off, Math.min(8 * MiB, capacity - off)));
  return h.digest('hex');
}

/** SHA-256 of a disk of a committed receiver image. */
export async function imageSha(rx: TestRx, sourceId: string, imageId: string, disk: number, capacity: number): Promise<string> {
  const h = createHash('sha256');
  for (let off = 0; off < capacity; off += 8 * MiB) h.update(await rx.rx.store.readImage(sourceId, imageId, disk, off, Math.min(8 * MiB, capacity - off)));
  return h.digest('hex');
}

/** Guest writes of `count` random blocks of `size` bytes at random aligned offsets; returns the bytes written. */
export async function guestWrites(lab: Lab, vm: string, key: number, capacity: number, count: number, size = 64 * 1024): Promise<number> {
  for (let i = 0; i < count; i++) {
    const offset = Math.floor(Math.random() * (capacity / size)) * size;
    await lab.write(vm, key, offset, randomBytes(size));
  }
  return count * size;
}
