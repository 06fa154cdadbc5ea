/**
 * Agent sources as jobs: one cycle of a job of kind `agent`, run by its agent (`vmlift agent serve`)
 * at the engine's request, and its outcome in the engine's terms (a CycleResult the job records like
 * a VM's: cycles, disks, image, states, metrics). The engine's retries, pause, resume, complete and
 * scheduling apply unchanged; the data goes from the agent to the receiver, never through here.
 */
import type { Logger } from 'pino';
import { CodedError, UserError } from '../util/errors.ts';
import type { JobRecord, JobSettings } from '../state/types.ts';
import type { ImageInfo } from '../model/images.ts';
import type { AgentCycleCommand, AgentCycleResult, AgentCycleSettings, AgentProgress } from '../transfer/agent-link.ts';
import { CycleError, type CycleResult, type DiskResult } from './vm-cycle.ts';
import type { LiveStatus } from './jobs.ts';
import type { AgentHub } from './agent-hub.ts';
import type { AgentRegistry } from './agent-registry.ts';

/** What the engine asks of agent sources (EngineOptions.agents). */
export interface AgentCycles {
  run(c: AgentCycleRequest): Promise<CycleResult>;
  /** Settings changed while a cycle of the job runs (bandwidth, compression at once; checksum next cycle). */
  setLive(jobId: string, cycleId: string, patch: Partial<JobSettings>): void;
}

export interface AgentCycleRequest {
  job: JobRecord;
  cycleId: string;
  /** No committed cycle yet: the agent runs its preflight first. */
  first: boolean;
  final: boolean;
  settings: JobSettings;
  signal: AbortSignal;
  logger: Logger;
  onStep(step: string): void;
  onProgress(disks: LiveStatus['disks']): void;
}

export interface AgentSourcesOptions {
  hub: AgentHub;
  registry: AgentRegistry;
  /** The receiver as the connector knows it (agents may override it in their own config). */
  receiver: { address: string; fingerprint: string; dataPort?: number };
  /** Sent to an agent that holds no credential for the job's source yet. */
  activationCode?: string;
  /** How long a cycle waits for its agent to connect before failing (transiently). Default 30 s. */
  offlineWaitMs?: number;
}

const agentSettings = (s: JobSettings): AgentCycleSettings => ({ compression: s.compression, bandwidthMbps: s.bandwidthMbps, checksum: s.checksum, maxImages: s.maxImages });

export class AgentSources implements AgentCycles {
  constructor(private readonly o: AgentSourcesOptions) {}

  async run(c: AgentCycleRequest): Promise<CycleResult> {
    const b = this.o.registry.binding(c.job.id);
    if (!b) throw new UserError('NO_AGENT_BINDING', `job ${c.job.id} names no agent`, `delete it and create it again with \`vmlift job create ${c.job.id} --agent AGENT\``);
    c.onStep('connect');
    if (!await this.o.hub.waitOnline(b.agentId, this.o.offlineWaitMs ?? 30_000, c.signal)) {
      c.signal.throwIfAborted();
      throw new UserError('AGENT_OFFLINE', `agent ${b.agentId} is not connected to the connector`,
        `start it on the source server: \`vmlift agent serve --connector https://CONNECTOR:PORT --connector-fingerprint FP --agent-id ${b.agentId} --token-file FILE\` (or check its network and proxy); the engine retries, then \`vmlift job resume ${c.job.id}\``,
        { transient: true });
    }
    const hello = this.o.hub.hello(b.agentId);
    const cmd: AgentCycleCommand = {
      type: 'cycle', jobId: c.job.id, cycleId: c.cycleId, sourceId: c.job.sourceId, devices: b.devices,
      settings: agentSettings(c.settings), first: c.first, final: c.final, receiver: this.o.receiver,
      ...(this.o.activationCode && !hello?.credentials.includes(c.job.sourceId) ? { activationCode: this.o.activationCode } : {}),
    };
    const started = Date.now();
    const r = await this.o.hub.runCycle(b.agentId, cmd, {
      signal: c.signal,
      onProgress: (p: AgentProgress) => {
        c.onStep(p.step);
        const secs = Math.max(0.001, (Date.now() - started) / 1000);
        c.onProgress(p.disks.map((d) => {
          const speed = d.done / secs;
          return { diskKey: d.disk, label: d.label, total: d.total, done: d.done, transport: 'agent', transportReason: `read by agent ${b.agentId}`, speed, remainingSeconds: speed > 0 ? (d.total - d.done) / speed : null };
        }));
      },
    });
    if (r.images) this.o.registry.setImages(c.job.id, r.images);
    const hints = r.checks?.filter((x) => x.status === 'warn') ?? [];
    if (hints.length) c.logger.warn({ agentId: b.agentId, hints: hints.map((h) => `${h.name}: ${h.message} (fix: ${h.fix ?? '-'})`) }, 'agent preflight: target readiness hints');
    if (!r.ok || !r.image) throw agentError(r);
    // The agent holds a credential for the source now: the activation code is not sent to it again.
    if (hello && !hello.credentials.includes(c.job.sourceId)) hello.credentials.push(c.job.sourceId);
    c.logger.info({ agentId: b.agentId, imageId: r.image.imageId }, 'agent cycle committed');
    return cycleResult(r, r.image, b.agentId);
  }

  setLive(jobId: string, cycleId: string, patch: Partial<JobSettings>): void {
    const b = this.o.registry.binding(jobId);
    if (!b) return;
    const s: Partial<AgentCycleSettings> = {};
    if (patch.bandwidthMbps !== undefined) s.bandwidthMbps = patch.bandwidthMbps;
    if (patch.compression !== undefined) s.compression = patch.compression;
    if (patch.checksum !== undefined) s.checksum = patch.checksum;
    if (Object.keys(s).length) this.o.hub.settings(b.agentId, cycleId, s);
  }

  /** The receiver's images of the job's source, as its agent last reported them. */
  images(jobId: string): ImageInfo[] { return this.o.registry.binding(jobId)?.images ?? []; }
}

/** The agent's failure as the job records it: its step, code, message and fix. */
function agentError(r: AgentCycleResult): Error {
  const e = new CodedError(r.error?.code ?? 'AGENT_ERROR', r.error?.message ?? 'the agent reported a failed cycle without a reason', {
    fix: r.error?.fix, transient: r.error?.transient ?? false,
  });
  return r.step === 'preflight' || r.step === 'transfer' || r.step === 'commit' ? new CycleError(r.step, e) : e;
}

function cycleResult(r: AgentCycleResult, image: ImageInfo, agentId: string): CycleResult {
  const base = r.baseImageId ?? image.baseImageId ?? null;
  const reported = r.disks?.length ? r.disks : image.disks.map((d) => ({ disk: d.disk, label: d.label ?? '', capacity: d.capacity, readBytes: 0, changedBytes: 0, sentBytes: 0 }));
  const disks: DiskResult[] = reported.map((d) => ({
    key: d.disk, label: d.label, capacity: d.capacity,
    plan: base ? { mode: 'incremental', sinceChangeId: base } : { mode: 'full', reason: 'first cycle of the agent source (allocated data only)' },
    changeId: null, areaBytes: d.changedBytes, sourceBytesRead: d.readBytes, transport: 'agent', transportReason: `read by agent ${agentId} on the source server`,
  }));
  return {
    image, kind: base ? 'incremental' : 'full', disks, wireBytes: r.wireBytes ?? 0, resentBytes: r.resentBytes ?? 0,
    snapshot: { ref: '', name: '' }, durationMs: r.durationMs ?? 0,
    // An agent reads the live device, no snapshot: its whole cycle moves data (the final-sync forecast's fixed part is 0).
    dataMs: r.durationMs ?? 0,
  };
}
