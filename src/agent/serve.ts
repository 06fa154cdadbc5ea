/**
 * `vmlift agent serve`: the agent driven by the connector. It dials out (long poll over pinned TLS,
 * through the proxy when one is set), reports its block devices, runs the cycles the connector asks
 * for (one at a time: interval, manual sync, final), aborts one on pause (the open cycle resumes on
 * the next request), applies live settings (bandwidth and compression at once, checksum from the next
 * cycle) and streams progress. The data goes from here straight to the receiver (device-cycle.ts).
 */
import { hostname } from 'node:os';
import { join } from 'node:path';
import { access, readdir } from 'node:fs/promises';
import type { Logger } from 'pino';
import { UserError, errorMessage, errorReport, isTransient } from '../util/errors.ts';
import { assertId } from '../util/ids.ts';
import { openSources } from '../source/open.ts';
import type { ReceiverSession } from '../transfer/contract.ts';
import type { ImageInfo } from '../model/images.ts';
import {
  AGENT_POLL_SECONDS, type AgentCommand, type AgentCycleCommand, type AgentCycleResult, type AgentCycleSettings, type AgentDiskProgress, type AgentProgress,
} from '../transfer/agent-link.ts';
import { AgentState } from './state.ts';
import { runDeviceCycle } from './device-cycle.ts';
import { connectAgentSender, type AgentConnectOptions, type AgentSender } from './connect.ts';
import { checkFailure, runAgentChecks } from './check.ts';
import { isBlockDevice, listDevices } from './devices.ts';
import type { ConnectorLink } from './connector-link.ts';

export interface ServeOptions {
  link: Pick<ConnectorLink, 'hello' | 'commands' | 'progress' | 'result'>;
  agentId: string;
  /** The allow-list and the default devices: the connector may also name any block device. */
  devices: string[];
  stateDir: string;
  /** The agent's own receiver settings; absent: the connector's. */
  receiver?: { address?: string | undefined; fingerprint?: string | undefined; dataPort?: number | undefined };
  code?: string | undefined;
  proxy?: string | undefined;
  proxyPassword?: string | undefined;
  ignoreCheck?: boolean;
  logger: Logger;
  signal: AbortSignal;
  retryForMs?: number;
  progressMs?: number;
  windowBytes?: number;
  /** Told of each cycle's end (the CLI prints it). */
  onCycle?: (r: AgentCycleResult) => void;
}

type LiveSender = AgentSender & Pick<ReceiverSession, 'setBandwidthMbps' | 'setCompression'>;

interface Active {
  cycleId: string;
  controller: AbortController;
  settings: AgentCycleSettings;
  sender?: LiveSender;
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

export async function serveAgent(o: ServeOptions): Promise<void> {
  const log = o.logger;
  let queue: Promise<void> = Promise.resolve();
  const pending = new Map<string, symbol>();
  let active: Active | undefined;
  let connected = false;
  let backoff = 1000;

  const handle = (c: AgentCommand): void => {
    if (c.type === 'abort') {
      pending.delete(c.cycleId);
      if (active?.cycleId === c.cycleId) {
        active.controller.abort(new UserError('PAUSED', `cycle ${c.cycleId} stopped by the connector: ${c.reason}`));
        // A flush or commit waiting on the wire does not watch the signal: closing the session ends it.
        // What the receiver acknowledged stays with the open cycle, which the next request resumes.
        active.sender?.close().catch(() => undefined);
      }
      return;
    }
    if (c.type === 'settings') {
      if (active?.cycleId !== c.cycleId) return;
      Object.assign(active.settings, c.settings);
      try {
        if (c.settings.bandwidthMbps !== undefined) active.sender?.setBandwidthMbps(c.settings.bandwidthMbps);
        if (c.settings.compression !== undefined) active.sender?.setCompression(c.settings.compression);
      } catch (e) { log.warn({ err: errorMessage(e) }, 'live setting refused'); }
      log.info({ cycleId: c.cycleId, settings: c.settings }, 'settings changed by the connector');
      return;
    }
    // A cycle id the connector repeats (a poll answered twice around a reconnect) is queued once; after
    // an abort (a pause) the same id may be asked again, and runs after the aborted run has unwound.
    if (pending.has(c.cycleId)) return;
    const mine = Symbol(c.cycleId);
    pending.set(c.cycleId, mine);
    queue = queue.then(async () => {
      const a: Active = { cycleId: c.cycleId, controller: new AbortController(), settings: { ...c.settings } };
      active = a;
      const stop = (): void => a.controller.abort(o.signal.reason);
      o.signal.addEventListener('abort', stop, { once: true });
      try {
        const r = await runCommandedCycle(o, c, a);
        log.info({ cycleId: c.cycleId, ok: r.ok, aborted: a.controller.signal.aborted }, 'cycle run ended');
        if (!a.controller.signal.aborted || r.ok) await deliver(o, r);
        o.onCycle?.(r);
      } finally {
        o.signal.removeEventListener('abort', stop);
        if (pending.get(c.cycleId) === mine) pending.delete(c.cycleId);
        active = undefined;
      }
    });
  };

  while (!o.signal.aborted) {
    try {
      if (!connected) {
        await o.link.hello({
          agentId: o.agentId, hostname: hostname(), version: '0.1.0', devices: await listDevices(o.devices), defaultDevices: o.devices,
          credentials: await registeredSources(o.stateDir),
        });
        connected = true;
        backoff = 1000;
        log.info({ agentId: o.agentId }, 'connected to the connector');
      }
      for (const c of await o.link.commands(AGENT_POLL_SECONDS, o.signal)) handle(c);
    } catch (e) {
      if (o.signal.aborted) break;
      if (!isTransient(e)) throw e;
      if (connected) log.warn({ err: errorMessage(e) }, 'lost the connector; reconnecting');
      connected = false;
      await sleep(backoff, o.signal);
      backoff = Math.min(backoff * 2, 10_000);
    }
  }
  active?.controller.abort(o.signal.reason);
  await queue.catch(() => undefined);
}

/** Posts a cycle's result, retrying while the connector is away (it waits for it to record the cycle). */
async function deliver(o: ServeOptions, r: AgentCycleResult): Promise<void> {
  const end = Date.now() + 10 * 60_000;
  for (let delay = 500; ; delay = Math.min(delay * 2, 10_000)) {
    try { await o.link.result(r); return; } catch (e) {
      if (!isTransient(e) || Date.now() > end || o.signal.aborted) { o.logger.warn({ err: errorMessage(e), cycleId: r.cycleId }, 'could not deliver the cycle result'); return; }
      await sleep(delay, o.signal);
    }
  }
}

async function runCommandedCycle(o: ServeOptions, c: AgentCycleCommand, a: Active): Promise<AgentCycleResult> {
  const log = o.logger.child({ jobId: c.jobId, cycleId: c.cycleId });
  const started = Date.now();
  let step: NonNullable<AgentCycleResult['step']> = 'connect';
  const disks = new Map<number, AgentDiskProgress>();
  const post = (): void => {
    const p: AgentProgress = { cycleId: c.cycleId, step, disks: [...disks.values()] };
    o.link.progress(p).catch(() => undefined);
  };
  const timer = setInterval(post, o.progressMs ?? 1000);
  try {
    const devices = c.devices.length ? c.devices : o.devices;
    for (const d of devices) {
      if (!o.devices.includes(d) && !isBlockDevice(d)) {
        throw new UserError('DEVICE_NOT_ALLOWED', `the connector asked for ${d}, which is neither a block device nor one of this agent's devices`,
          `add it to "devices" in /etc/vmlift/agent.json (or --device ${d}) on the agent, or create the job with block devices only`);
      }
    }
    const sourceId = assertId(c.sourceId, 'source id');
    const state = await AgentState.open(join(o.stateDir, 'sources', sourceId));
    const receiver = {
      address: o.receiver?.address ?? c.receiver.address,
      fingerprint: o.receiver?.fingerprint ?? c.receiver.fingerprint,
      dataPort: o.receiver?.dataPort ?? c.receiver.dataPort,
    };
    let checks: AgentCycleResult['checks'];
    if (c.first && !o.ignoreCheck) {
      step = 'preflight';
      post();
      checks = await runAgentChecks({ devices, stateDir: state.dir, receiver, proxy: o.proxy, proxyPassword: o.proxyPassword });
      const failure = checkFailure(checks);
      if (failure) return { cycleId: c.cycleId, ok: false, step, error: { ...errorReport(failure), transient: false }, checks };
    }
    step = 'connect';
    const connectOpts = (): AgentConnectOptions => ({
      receiver: receiver.address, fingerprint: receiver.fingerprint, sourceId, code: o.code ?? c.activationCode,
      credentialPath: state.credentialPath, proxy: o.proxy, proxyPassword: o.proxyPassword,
      compression: a.settings.compression, bandwidthMbps: a.settings.bandwidthMbps, checksum: a.settings.checksum,
      logger: log, resumeTimeoutMs: o.retryForMs ?? 10 * 60_000,
      ...(receiver.dataPort !== undefined ? { dataPort: receiver.dataPort } : {}),
      ...(o.windowBytes !== undefined ? { windowBytes: o.windowBytes } : {}),
    });
    const images = async (): Promise<ImageInfo[]> => {
      const s = await connectAgentSender(connectOpts());
      try { return await s.listImages(); } finally { await s.close().catch(() => undefined); }
    };
    // A cycle committed before the connector heard of it (a connector restart, a lost result): report it.
    const before = await images();
    const done = before.find((i) => i.cycleId === c.cycleId);
    if (done) {
      if ((await state.openCycle())?.cycleId === c.cycleId) await state.setOpenCycle(null);
      log.info({ imageId: done.imageId }, 'the cycle was already committed; reporting it');
      return { cycleId: c.cycleId, ok: true, image: done, baseImageId: done.baseImageId, disks: [], wireBytes: 0, resentBytes: 0, durationMs: 0, images: before, ...(checks ? { checks } : {}) };
    }
    step = 'transfer';
    const sources = await openSources(devices);
    try {
      const report = await runDeviceCycle({
        sources, state, logger: log, retryForMs: o.retryForMs, signal: a.controller.signal,
        checksum: a.settings.checksum, maxImages: a.settings.maxImages, cycleId: c.cycleId,
        connect: async () => {
          const s = await connectAgentSender(connectOpts()) as LiveSender;
          a.sender = s;
          return s;
        },
        onProgress: (p) => { disks.set(p.disk, { disk: p.disk, label: p.label, done: p.done, total: p.total, changed: p.changed, wireBytes: p.wireBytes }); },
      });
      step = 'commit';
      const after = await images().catch(() => undefined);
      const image = after?.find((i) => i.imageId === report.imageId);
      if (!image) throw new UserError('AGENT_IMAGE_MISSING', `image ${report.imageId} committed but not listed by the receiver`, 'none at first: the engine retries the cycle; if the job goes to error, check the receiver (`vmlift image ls`), then `vmlift job resume JOB`', { transient: true });
      log.info({ imageId: image.imageId, wireBytes: report.wireBytes }, 'cycle committed');
      return {
        cycleId: c.cycleId, ok: true, image, baseImageId: report.baseImageId, wireBytes: report.wireBytes, resentBytes: report.resentBytes, durationMs: Date.now() - started,
        disks: report.disks.map((d) => ({ disk: d.disk, label: d.label, capacity: d.capacity, readBytes: d.readBytes, changedBytes: d.changedBytes, sentBytes: d.sentBytes })),
        images: after, ...(checks ? { checks } : {}),
      };
    } finally {
      await Promise.all(sources.map((s) => s.close()));
    }
  } catch (e) {
    log.warn({ err: errorMessage(e), step }, 'cycle failed');
    return { cycleId: c.cycleId, ok: false, step, error: { ...errorReport(e), transient: isTransient(e) } };
  } finally {
    clearInterval(timer);
  }
}

/** Source ids with a credential under `<state>/sources/`. */
async function registeredSources(stateDir: string): Promise<string[]> {
  const names = await readdir(join(stateDir, 'sources')).catch(() => [] as string[]);
  const out: string[] = [];
  for (const n of names) if (await access(join(stateDir, 'sources', n, 'credential.json')).then(() => true, () => false)) out.push(n);
  return out;
}

