/**
 * The job engine: job records and their state machine (created → syncing → waiting → … → completing →
 * completed, plus paused and error), the settings a running job takes live, and running one cycle of a
 * job — connect its services, preflight and enable CBT, runVmCycle (vm-cycle.ts) with retries of
 * transient errors, record the outcome (changeIds, image, error with step, code and fix) — plus
 * recovery of a cycle a crash left running (its image adopted or its snapshot swept) and job deletion.
 * Scheduling is scheduler.ts; the state is state/.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { UserError, errorMessage, errorReport, isTransient } from '../util/errors.ts';
import { assertId } from '../util/ids.ts';
import type { DiskSelection, JobError, JobRecord, JobSettings, JobState, StateStore } from '../state/types.ts';
import { description, jobName } from './names.ts';
import type { DiskOpener, ReceiverService, VCenterService } from './services.ts';
import type { ImageInfo } from '../model/images.ts';
import { CycleError, runVmCycle, SNAPSHOT_PREFIX, type CycleResult, type DiskProgress } from './vm-cycle.ts';
import { crashPoint } from '../util/crash.ts';
import type { AgentCycles } from './agent-source.ts';
import { followBandwidth, formatBandwidthWindow, type BandwidthFollower } from './bandwidth-windows.ts';

export interface JobServices {
  vcenter: VCenterService;
  disks: DiskOpener;
  receiver: ReceiverService;
  /** Delete the job's images on the receiver (job delete --remove-images). */
  removeImages?(): Promise<void>;
  close(): Promise<void>;
}

export interface RetryPolicy { attempts: number; baseDelayMs: number; maxDelayMs: number }

export interface EngineOptions {
  state: StateStore;
  connect(job: JobRecord): Promise<JobServices>;
  logger: Logger;
  retry?: RetryPolicy;
  now?: () => Date;
  events?: EngineEvents;
  /** Runs the cycles of agent jobs (kind `agent`) through their agents (agent-source.ts). */
  agents?: AgentCycles;
  /** The clock bandwidth windows are read on (default: the system's; tests move it to a window's edge). */
  bandwidthClock?: () => Date;
  /** How often a running cycle reads the clock for a window's edge (default 1000 ms). */
  bandwidthPollMs?: number;
}

export interface EngineEvents {
  cycleCommitted?(e: { jobId: string; kind: string; wireBytes: number; sourceBytesRead: number; seconds: number }): void;
  cycleFailed?(e: { jobId: string; step: string; transient: boolean; message: string }): void;
}

export interface LiveStatus {
  jobId: string;
  cycleId: string;
  step: string;
  startedAt: number;
  /** Percent done of the vCenter task the step waits for (snapshot, cleanup); absent between tasks. */
  taskProgress?: number;
  /** The wire limit in force for the cycle, Mbps (0 = unlimited), as its bandwidth windows set it. */
  bandwidthMbps?: number;
  disks: (DiskProgress & { speed: number; remainingSeconds: number | null })[];
}

interface Running {
  controller: AbortController;
  promise: Promise<void>;
  settings: JobSettings;
  services?: JobServices;
  status: LiveStatus;
  /** Why this cycle reads every disk in full after vmlift re-enabled CBT (kept across its retries). */
  cbtReenabled?: string;
  /** Moves the wire limit at the edges of the job's bandwidth windows while the cycle is connected. */
  bandwidth?: BandwidthFollower;
}

const DEFAULT_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 5_000, maxDelayMs: 120_000 };

/** A cycle id: time first (ids sort by start), then random, as jobs may start cycles in the same millisecond. */
export function newCycleId(): string {
  return `c${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
}

/**
 * Jobs and their state machine (docs/design.md): created → syncing → waiting → (syncing → waiting)*
 * → completing → completed, plus paused and error. One cycle at a time per job.
 */
export class JobEngine {
  private readonly running = new Map<string, Running>();
  /** Jobs whose failure the state store could not record (its folder is full). */
  private readonly unrecorded = new Map<string, JobError>();
  private readonly retry: RetryPolicy;
  private readonly now: () => Date;

  constructor(private readonly o: EngineOptions) {
    this.retry = o.retry ?? DEFAULT_RETRY;
    this.now = o.now ?? (() => new Date());
  }

  get state(): StateStore { return this.o.state; }

  /**
   * A new job in `created`; with `start` it goes on to `syncing` at once (the API's and CLI's
   * default: "the migration job starts immediately after creation"; `--no-start` keeps it created).
   */
  createJob(job: {
    id: string; name?: string; description?: string; disks?: DiskSelection | null; vmRef: string | null; kind?: 'vm' | 'agent'; sourceId?: string;
    settings: JobSettings; start?: boolean;
  }): JobRecord {
    const id = assertId(job.id, 'job id');
    const created = this.o.state.createJob({
      id, name: jobName(job.name ?? id), description: description(job.description ?? ''), disks: job.disks ?? null,
      kind: job.kind ?? 'vm', vmRef: job.vmRef, sourceId: assertId(job.sourceId ?? id, 'source id'), settings: job.settings,
    });
    return job.start ? this.start(id) : created;
  }

  /** Rename or describe a job (`job set --name/--description`); any state. */
  edit(id: string, patch: { name?: string; description?: string }): JobRecord {
    this.getJob(id);
    return this.o.state.updateJob(id, {
      ...(patch.name !== undefined ? { name: jobName(patch.name) } : {}),
      ...(patch.description !== undefined ? { description: description(patch.description) } : {}),
    });
  }

  getJob(id: string): JobRecord {
    const job = this.o.state.getJob(id);
    if (!job) throw new UserError('NO_JOB', `no job named ${id}`, 'list jobs with `vmlift job ls`');
    const unrecorded = this.unrecorded.get(id);
    return unrecorded ? { ...job, state: 'error', error: unrecorded } : job;
  }

  /** Every job as getJob shows it, in one query (the live event stream lists them each second). */
  listJobs(): JobRecord[] {
    return this.o.state.listJobs().map((job) => {
      const unrecorded = this.unrecorded.get(job.id);
      return unrecorded ? { ...job, state: 'error', error: unrecorded } : job;
    });
  }

  /** created | error → syncing (the first cycle starts at the next scheduler tick). */
  start(id: string): JobRecord {
    const job = this.getJob(id);
    if (job.state === 'created' || job.state === 'error') return this.recorded(id, this.o.state.updateJob(id, { state: 'syncing', error: null }));
    if (job.state === 'completed') throw new UserError('JOB_COMPLETED', `job ${id} is completed; it runs no more cycles`, 'create a new job to migrate the VM again');
    return job;
  }

  /** Ask for a cycle now (waiting jobs); a running cycle is not interrupted. */
  requestSync(id: string): JobRecord {
    const job = this.getJob(id);
    if (job.state === 'waiting') return this.o.state.updateJob(id, { state: 'syncing' });
    if (job.state === 'syncing' || job.state === 'completing') return job;
    if (job.state === 'completed') {
      throw new UserError('JOB_COMPLETED', `job ${id} is completed; it runs no more cycles`, 'its final image is on the receiver (`vmlift job show`); create a new job to migrate the VM again');
    }
    throw new UserError('CANNOT_SYNC', `job ${id} is ${job.state}; a sync can start only when it is waiting`,
      job.state === 'created' ? 'start it with `vmlift job start`' : job.state === 'paused' ? 'resume it with `vmlift job resume`' : 'see `vmlift job show`');
  }

  /** Stop reading and keep state: the open cycle resumes where it was after `resume`. */
  pause(id: string): JobRecord {
    const job = this.getJob(id);
    if (job.state === 'paused') return job;
    if (job.state === 'completed') throw new UserError('JOB_COMPLETED', `job ${id} is completed`, 'nothing to pause');
    const resumeState: JobState = job.state === 'created' ? 'created' : job.state === 'error' ? 'syncing'
      : job.state === 'waiting' ? 'waiting' : job.state;
    const updated = this.o.state.updateJob(id, { state: 'paused', resumeState });
    this.running.get(id)?.controller.abort(new UserError('PAUSED', `job ${id} was paused`));
    return updated;
  }

  resume(id: string): JobRecord {
    const job = this.getJob(id);
    if (job.state === 'paused') return this.o.state.updateJob(id, { state: job.resumeState ?? 'waiting', resumeState: null });
    if (job.state === 'error') return this.recorded(id, this.o.state.updateJob(id, { state: 'syncing', error: null }));
    return job;
  }

  /**
   * One final sync (the user has stopped the services), then completed. With `finalSync: false`
   * (SMC's "Complete incremental sync" without "run one last sync") the job is completed at once on
   * its last committed image: refused before the first image, and while a cycle runs or is unfinished.
   */
  complete(id: string, opts: { finalSync?: boolean } = {}): JobRecord {
    const job = this.getJob(id);
    if (opts.finalSync === false && job.state !== 'completed' && job.state !== 'completing' && job.state !== 'created') return this.completeWithoutSync(job);
    switch (job.state) {
      case 'completed':
        throw new UserError('ALREADY_COMPLETED', `job ${id} is already completed`, 'its final images are on the receiver: `vmlift image ls`');
      case 'completing':
        throw new UserError('ALREADY_COMPLETING', `job ${id} is already completing (its final sync is running or queued)`, 'wait for it: `vmlift job show`');
      case 'created':
        throw new UserError('NOT_STARTED', `job ${id} has not synced yet`, 'start it first with `vmlift job start`, then complete it');
      case 'paused':
        return this.o.state.updateJob(id, { state: 'completing', resumeState: null });
      default:
        // A cycle running now started before the request: the scheduler runs one more, final, cycle after it.
        return this.o.state.updateJob(id, { state: 'completing', error: null });
    }
  }

  private completeWithoutSync(job: JobRecord): JobRecord {
    const id = job.id;
    const fix = `let it finish (\`vmlift job show ${id}\`), then run \`vmlift job complete ${id} --no-final-sync\` again; or complete with a final sync: \`vmlift job complete ${id}\``;
    if (this.running.has(id)) throw new UserError('CYCLE_RUNNING', `job ${id} is running a cycle; completing without a final sync would drop it`, fix);
    if (this.o.state.runningCycles().some((c) => c.jobId === id)) {
      throw new UserError('CYCLE_RUNNING', `job ${id} has an unfinished cycle (interrupted or paused); completing without a final sync would drop it`,
        `resume it (\`vmlift job resume ${id}\`) and ${fix}`);
    }
    if (job.state === 'syncing') throw new UserError('CYCLE_RUNNING', `job ${id} is about to run a cycle; completing without a final sync would drop it`, fix);
    if (!this.o.state.listCycles(id, 1000).some((c) => c.state === 'committed')) {
      throw new UserError('NO_IMAGE', `job ${id} has no committed image yet; without a final sync it would complete with nothing on the receiver`,
        `wait for its first cycle (\`vmlift job show ${id}\`), or complete it with a final sync: \`vmlift job complete ${id}\``);
    }
    return this.recorded(id, this.o.state.updateJob(id, { state: 'completed', resumeState: null, error: null, nextSyncAt: null, syncRequested: false }));
  }

  /** Change settings; bandwidth and compression reach a running cycle at once, checksum from its next read. */
  updateSettings(id: string, patch: Partial<JobSettings>): JobRecord {
    const job = this.getJob(id);
    const settings = { ...job.settings, ...patch };
    const updated = this.o.state.updateJob(id, { settings });
    const run = this.running.get(id);
    if (run) {
      Object.assign(run.settings, patch);
      if (patch.bandwidthMbps !== undefined || patch.bandwidthWindows !== undefined) run.bandwidth?.refresh();
      if (patch.compression !== undefined) run.services?.receiver.setCompression(patch.compression);
      if (job.kind === 'agent') this.o.agents?.setLive(id, run.status.cycleId, patch);
    }
    return updated;
  }

  async delete(id: string, opts: { removeImages?: boolean } = {}): Promise<void> {
    const job = this.getJob(id);
    if (opts.removeImages && job.kind === 'agent') {
      throw new UserError('CANNOT_REMOVE_IMAGES', `job ${id} is an agent source: its images are registered to its agent, not to this connector`,
        `delete the job without --remove-images, then its images on the receiver: \`vmlift image rm --data-dir DIR --source ${job.sourceId} --image ID\``);
    }
    const run = this.running.get(id);
    if (run) {
      run.controller.abort(new UserError('DELETED', `job ${id} was deleted`));
      await run.promise.catch(() => undefined);
    }
    if (job.vmRef || opts.removeImages) {
      const services = await this.o.connect(job);
      try {
        if (job.vmRef) await services.vcenter.sweepSnapshots(job.vmRef, 'vmlift-');
        if (opts.removeImages) {
          if (!services.removeImages) throw new UserError('CANNOT_REMOVE_IMAGES', 'this connector cannot delete images on the receiver', 'delete them there with `vmlift image rm`');
          await services.removeImages();
        }
      } finally {
        await services.close();
      }
    }
    this.o.state.deleteJob(id);
  }

  isRunning(id: string): boolean { return this.running.has(id); }

  live(id: string): LiveStatus | undefined { return this.running.get(id)?.status; }

  /** Jobs that should run a cycle now. */
  dueJobs(): JobRecord[] {
    const t = this.now().getTime();
    return this.o.state.listJobs().filter((j) => {
      if (this.running.has(j.id) || this.unrecorded.has(j.id)) return false;
      if (j.state === 'syncing' || j.state === 'completing') return true;
      return j.state === 'waiting' && j.settings.autoSync && j.nextSyncAt !== null && Date.parse(j.nextSyncAt) <= t;
    });
  }

  /** Run one cycle of the job now (with retries of transient errors). Resolves when it ends. */
  runNow(id: string): Promise<void> {
    const existing = this.running.get(id);
    if (existing) return existing.promise;
    const job = this.getJob(id);
    const controller = new AbortController();
    const settings = { ...job.settings };
    const run: Running = {
      controller, settings, promise: Promise.resolve(),
      status: { jobId: id, cycleId: '', step: 'connect', startedAt: Date.now(), disks: [] },
    };
    this.running.set(id, run);
    run.promise = this.runCycleWithRetries(job, run).finally(() => this.running.delete(id));
    return run.promise;
  }

  /** Wait for every running cycle (shutdown). */
  async drain(abort = false): Promise<void> {
    for (const r of this.running.values()) if (abort) r.controller.abort(new UserError('SHUTDOWN', 'connector is shutting down'));
    await Promise.all([...this.running.values()].map((r) => r.promise.catch(() => undefined)));
  }

  private async runCycleWithRetries(job: JobRecord, run: Running): Promise<void> {
    if (job.state === 'waiting') job = this.o.state.updateJob(job.id, { state: 'syncing' });
    const final = job.state === 'completing';
    const log = this.o.logger.child({ jobId: job.id });
    // A cycle left running by a crash or a pause keeps its id, so the receiver's resume applies.
    const leftover = this.o.state.runningCycles().find((c) => c.jobId === job.id);
    const committed = this.o.state.listCycles(job.id, 1000).filter((c) => c.state === 'committed');
    const previous = committed[0] ?? null;
    const cycle = leftover ?? this.o.state.startCycle({
      id: newCycleId(), jobId: job.id, kind: final ? 'final' : previous ? 'incremental' : 'full',
      reason: final ? 'complete requested' : previous ? null : 'first cycle', snapshotName: null,
    });
    run.status.cycleId = cycle.id;
    for (let attempt = 1; ; attempt++) {
      try {
        const result = await this.attempt(job, run, cycle.id, previous?.imageId ?? null, !previous, log, leftover !== undefined, attempt >= this.retry.attempts);
        crashPoint('engine:after-receiver-commit');
        const changeIds = result.disks.map((d) => ({ diskKey: d.key, changeId: d.changeId }));
        this.o.state.setDisks(job.id, result.disks.map((d) => ({
          diskKey: d.key, label: d.label, capacity: d.capacity, changeId: null, transport: d.transport ?? null, transportReason: d.transportReason ?? null,
        })));
        this.o.state.updateCycle(cycle.id, {
          dataMs: result.dataMs,
          sourceBytesRead: result.disks.reduce((n, d) => n + d.sourceBytesRead, 0),
          changedBytes: result.disks.reduce((n, d) => n + d.areaBytes, 0),
          wireBytes: result.wireBytes, snapshotName: result.snapshot.name,
          kind: final ? 'final' : result.kind,
          reason: result.disks.map((d) => d.plan.mode === 'full' ? `disk ${d.key}: ${d.plan.reason}` : '').filter(Boolean).join('; ') || null,
        });
        this.o.state.commitCycle(cycle.id, result.image.imageId, changeIds);
        const current = this.getJob(job.id);
        const next = new Date(this.now().getTime() + current.settings.intervalSeconds * 1000).toISOString();
        if (current.state === 'paused') {
          this.o.state.updateJob(job.id, { resumeState: final ? 'completed' : 'waiting', nextSyncAt: next, error: null });
        } else {
          // A complete requested during a non-final cycle leaves the job completing: the final cycle runs next.
          const state: JobState = final ? 'completed' : current.state === 'completing' ? 'completing' : 'waiting';
          this.o.state.updateJob(job.id, { state, nextSyncAt: state === 'waiting' ? next : null, error: null, syncRequested: false });
        }
        log.info({ cycleId: cycle.id, imageId: result.image.imageId, kind: result.kind, wireBytes: result.wireBytes, ms: result.durationMs }, 'cycle committed');
        this.o.events?.cycleCommitted?.({
          jobId: job.id, kind: final ? 'final' : result.kind, wireBytes: result.wireBytes,
          sourceBytesRead: result.disks.reduce((n, d) => n + d.sourceBytesRead, 0), seconds: result.durationMs / 1000,
        });
        return;
      } catch (e) {
        if (run.controller.signal.aborted) {
          log.info({ cycleId: cycle.id, reason: errorMessage(run.controller.signal.reason) }, 'cycle interrupted; it resumes later');
          return;
        }
        const step = e instanceof CycleError ? e.step : (e as { code?: unknown }).code === 'STATE_NO_SPACE' ? 'state' : 'connect';
        const transient = isTransient(e);
        const error = jobError(step, e, this.now(), attempt);
        log.warn({ cycleId: cycle.id, step, attempt, transient, errCode: error.code, err: error.message }, 'cycle attempt failed');
        this.o.events?.cycleFailed?.({ jobId: job.id, step, transient, message: error.message });
        if (transient && attempt < this.retry.attempts) {
          this.o.state.updateJob(job.id, { error });
          const delay = Math.min(this.retry.maxDelayMs, this.retry.baseDelayMs * 2 ** (attempt - 1));
          await sleep(delay, run.controller.signal).catch(() => undefined);
          if (run.controller.signal.aborted) return;
          continue;
        }
        this.recordFailure(job.id, cycle.id, error, log);
        return;
      }
    }
  }

  /**
   * The job goes to `error`. A cycle stopped by a full state folder stays running, so that its resume
   * finds the receiver's image by cycle id; when even the error cannot be written, it is kept here.
   */
  private recordFailure(jobId: string, cycleId: string, error: JobError, log: Logger): void {
    try {
      if (error.code !== 'STATE_NO_SPACE') this.o.state.failCycle(cycleId, error.message);
      this.o.state.updateJob(jobId, { state: 'error', resumeState: null, error });
      this.unrecorded.delete(jobId);
    } catch (e) {
      if ((e as { code?: unknown }).code !== 'STATE_NO_SPACE') throw e;
      log.error({ errCode: error.code, err: error.message, fix: error.fix }, 'the job failed and its state folder is full: the error is kept in memory until `job resume`');
      this.unrecorded.set(jobId, error);
    }
  }

  /** A state write for a job succeeded: an error kept in memory is replaced by it. */
  private recorded(jobId: string, job: JobRecord): JobRecord {
    this.unrecorded.delete(jobId);
    return job;
  }

  private async attempt(job: JobRecord, run: Running, cycleId: string, previousImageId: string | null, first: boolean, log: Logger,
    resumed: boolean, lastAttempt: boolean): Promise<CycleResult> {
    if (job.kind === 'agent') {
      if (!this.o.agents) throw new UserError('NO_AGENT_HUB', `job ${job.id} is an agent source and this connector takes no agents`, 'start the connector with `vmlift connector serve --agent-port 8091`');
      return await this.o.agents.run({
        job, cycleId, first, final: job.state === 'completing', settings: run.settings, signal: run.controller.signal, logger: log,
        onStep: (s) => { run.status.step = s; }, onProgress: (d) => { run.status.disks = d; },
      });
    }
    if (!job.vmRef) throw new UserError('NOT_A_VM', `job ${job.id} has no VM`, 'agent sources sync with `vmlift agent sync`');
    run.status.step = 'connect';
    const services = await this.o.connect(job);
    run.services = services;
    try {
      if (resumed) {
        // A crash between the receiver's commit and ours: the image is there, with the changeIds in its meta.
        const image = (await services.receiver.listImages()).find((i) => i.cycleId === cycleId);
        if (image) {
          log.info({ cycleId, imageId: image.imageId }, 'cycle was committed on the receiver before a restart; recording it');
          await services.vcenter.sweepSnapshots(job.vmRef, SNAPSHOT_PREFIX);
          return recoveredResult(image);
        }
      }
      run.bandwidth?.stop();
      run.bandwidth = followBandwidth({
        settings: () => run.settings, clock: this.o.bandwidthClock, intervalMs: this.o.bandwidthPollMs,
        apply: (mbps) => { services.receiver.setBandwidthMbps(mbps); run.status.bandwidthMbps = mbps; },
        onChange: (c) => log.info({ cycleId, fromMbps: c.from, toMbps: c.to, window: c.window ? formatBandwidthWindow(c.window) : null },
          c.window ? 'bandwidth window: the limit changes' : 'bandwidth window ended: back to the job\'s limit'),
      });
      services.receiver.setCompression(run.settings.compression);
      if (first) {
        run.status.step = 'preflight';
        const failed = await services.vcenter.preflight(job.vmRef).then((checks) => checks.filter((c) => !c.ok), (e) => { throw new CycleError('preflight', e); });
        if (failed.length) {
          throw new CycleError('preflight', new UserError('PREFLIGHT', `preflight failed: ${failed.map((c) => c.message).join('; ')}`,
            failed.map((c) => c.fix).filter(Boolean).join('; ')));
        }
      }
      // Every cycle: an administrator (or another tool) may have turned CBT off since the last one.
      run.status.step = 'cbt';
      const { changed } = await services.vcenter.ensureCbt(job.vmRef).catch((e) => { throw new CycleError('cbt', e); });
      if (changed && first) log.info({ vmRef: job.vmRef }, 'enabled changed block tracking');
      else if (changed) {
        // Tracking restarted: a changeId recorded before is of another epoch, so what changed since it is unknown.
        run.cbtReenabled = 'CBT was turned off since the last cycle; vmlift re-enabled it, and changeIds from before are of no use';
        log.warn({ vmRef: job.vmRef }, 'change tracking was off: re-enabled it (with a stun); this cycle reads every disk in full');
      }
      const previousChangeIds = new Map(this.o.state.getDisks(job.id).map((d) => [d.diskKey, d.changeId]));
      const started = Date.now();
      return await runVmCycle({
        jobId: job.id, cycleId, vmRef: job.vmRef, settings: run.settings, previousChangeIds, previousImageId, diskSelection: job.disks,
        forceFull: first ? 'first cycle' : run.cbtReenabled, resumed, lastAttempt,
        vcenter: services.vcenter, disks: services.disks, receiver: services.receiver, logger: log,
        signal: run.controller.signal,
        onStep: (s) => { run.status.step = s; delete run.status.taskProgress; },
        onTaskProgress: (p) => { run.status.taskProgress = p; },
        onSnapshot: (s) => this.o.state.updateCycle(cycleId, { snapshotName: s.name, snapshotAt: new Date().toISOString() }),
        onProgress: (p) => {
          const secs = Math.max(0.001, (Date.now() - started) / 1000);
          run.status.disks = p.map((d) => {
            const speed = d.done / secs;
            return { ...d, speed, remainingSeconds: speed > 0 ? (d.total - d.done) / speed : null };
          });
        },
      });
    } finally {
      run.bandwidth?.stop();
      run.bandwidth = undefined;
      run.services = undefined;
      await services.close().catch(() => undefined);
    }
  }
}

/** What the job records of a failed attempt: the step, and the error's code, message and fix. */
function jobError(step: string, e: unknown, at: Date, attempts: number): JobError {
  const { code, message, fix } = errorReport(e);
  return { step, code, message, ...(fix !== undefined ? { fix } : {}), at: at.toISOString(), attempts };
}

function recoveredResult(image: ImageInfo): CycleResult {
  const keys = (image.meta.diskKeys as number[] | undefined) ?? image.disks.map((d) => d.disk);
  const changeIds = (image.meta.changeIds as Record<string, string | null> | undefined) ?? {};
  return {
    image, kind: image.baseImageId ? 'incremental' : 'full', wireBytes: 0, resentBytes: 0, durationMs: 0, dataMs: 0,
    snapshot: { ref: '', name: String(image.meta.snapshot ?? '') },
    disks: image.disks.map((d, i) => ({
      key: keys[i]!, label: d.label ?? '', capacity: d.capacity, plan: { mode: 'full', reason: 'recovered' },
      changeId: changeIds[String(keys[i])] ?? null, areaBytes: 0, sourceBytesRead: 0,
    })),
  };
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(t); reject(signal.reason); }, { once: true });
  });
}
