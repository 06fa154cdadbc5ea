/**
 * `job complete --max-final-sync 5m`: incremental cycles back to back until the forecast of the final
 * sync (final-sync-forecast.ts) fits the bound. Each cycle shortens the next one while the change
 * rate is below the throughput and not growing; when the forecast stops shrinking, or the fixed part
 * of a cycle alone exceeds the bound, the bound is unreachable and the job is left waiting as it was.
 * The complete itself (after the user stopped the services) is the caller's.
 */
import type { Logger } from 'pino';
import { UserError, errorMessage } from '../util/errors.ts';
import type { JobEngine } from './jobs.ts';
import { forecastFinalSync, formatRate, formatSeconds, formatSize, type FinalSyncForecast } from './final-sync-forecast.ts';

export interface ConvergeOptions {
  /** The bound on the final sync, seconds. */
  maxFinalSyncSeconds: number;
  /** Give up after this many cycles (default 12). */
  maxCycles?: number;
}

export type ConvergeState = 'running' | 'converged' | 'unreachable' | 'failed';

export interface ConvergeStep {
  /** The cycle that ran before this forecast (null: the forecast before the first). */
  cycleId: string | null;
  forecastSeconds: number | null;
  changeRatePerHour: number | null;
  throughput: number | null;
}

export interface ConvergeStatus {
  jobId: string;
  state: ConvergeState;
  maxFinalSyncSeconds: number;
  /** Incremental cycles run so far. */
  cycles: number;
  steps: ConvergeStep[];
  /** The last forecast. */
  forecast: FinalSyncForecast | null;
  /** Why it stopped (unreachable, failed), or what it is doing. */
  message: string;
  startedAt: string;
  endedAt: string | null;
}

/** A forecast counts as shrinking when it is at most this fraction of the best one before it. */
const SHRINK = 0.9;
/** Cycles in a row without shrinking before the bound is declared unreachable. */
const STALLS = 2;
const DEFAULT_MAX_CYCLES = 12;

export class FinalSyncConvergence {
  private readonly runs = new Map<string, { status: ConvergeStatus; done: Promise<ConvergeStatus> }>();

  constructor(private readonly engine: JobEngine, private readonly o: { logger?: Logger; now?: () => Date } = {}) {}

  private now(): Date { return this.o.now?.() ?? new Date(); }

  status(jobId: string): ConvergeStatus | undefined { return this.runs.get(jobId)?.status; }

  /** Start converging a job (a second start while one runs answers the running one). */
  start(jobId: string, o: ConvergeOptions): ConvergeStatus {
    const running = this.runs.get(jobId);
    if (running?.status.state === 'running') return running.status;
    const job = this.engine.getJob(jobId);
    if (!(o.maxFinalSyncSeconds > 0)) throw new UserError('BAD_MAX_FINAL_SYNC', `the final sync bound must be more than 0 s, got ${o.maxFinalSyncSeconds}`, 'pass --max-final-sync like 5m or 90s');
    if (!['waiting', 'syncing'].includes(job.state)) {
      throw new UserError('CANNOT_CONVERGE', `job ${jobId} is ${job.state}; --max-final-sync runs incremental cycles, which needs a job that has synced and is waiting or syncing`,
        job.state === 'created' ? `start it first: \`vmlift job start ${jobId}\`` : job.state === 'paused' ? `resume it: \`vmlift job resume ${jobId}\``
          : job.state === 'error' ? `fix the error shown by \`vmlift job show ${jobId}\`, then \`vmlift job resume ${jobId}\`` : `see \`vmlift job show ${jobId}\``);
    }
    const status: ConvergeStatus = {
      jobId, state: 'running', maxFinalSyncSeconds: o.maxFinalSyncSeconds, cycles: 0, steps: [], forecast: null,
      message: 'running incremental cycles back to back', startedAt: this.now().toISOString(), endedAt: null,
    };
    const done = this.loop(status, o.maxCycles ?? DEFAULT_MAX_CYCLES).catch((e) => this.end(status, 'failed', `stopped: ${errorMessage(e)}`));
    this.runs.set(jobId, { status, done });
    return status;
  }

  /**
   * Converge every job of a list at once (a workgroup): each member that cannot start is reported
   * failed with the reason; the others run their own cycles.
   */
  startMany(jobIds: readonly string[], o: ConvergeOptions): ConvergeStatus[] {
    return jobIds.map((jobId) => {
      try {
        return this.start(jobId, o);
      } catch (e) {
        const at = this.now().toISOString();
        const status: ConvergeStatus = { jobId, state: 'failed', maxFinalSyncSeconds: o.maxFinalSyncSeconds, cycles: 0, steps: [], forecast: null, message: errorMessage(e), startedAt: at, endedAt: at };
        this.runs.set(jobId, { status, done: Promise.resolve(status) });
        return status;
      }
    });
  }

  /** Resolves with the final status of the job's convergence. */
  wait(jobId: string): Promise<ConvergeStatus> {
    const r = this.runs.get(jobId);
    if (!r) throw new UserError('NO_CONVERGE', `job ${jobId} is not converging`, `start it with \`vmlift job complete ${jobId} --max-final-sync 5m\``);
    return r.done;
  }

  private forecast(jobId: string): FinalSyncForecast | { reason: string } {
    const job = this.engine.getJob(jobId);
    const r = forecastFinalSync(this.engine.state.listCycles(jobId, 20), job.settings, this.now());
    return r.available ? r.forecast : { reason: r.reason };
  }

  private record(status: ConvergeStatus, cycleId: string | null): FinalSyncForecast | null {
    const f = this.forecast(status.jobId);
    const forecast = 'seconds' in f ? f : null;
    status.forecast = forecast;
    status.steps.push({ cycleId, forecastSeconds: forecast?.seconds ?? null, changeRatePerHour: forecast?.changeRatePerHour ?? null, throughput: forecast?.throughput ?? null });
    return forecast;
  }

  private end(status: ConvergeStatus, state: ConvergeState, message: string): ConvergeStatus {
    status.state = state;
    status.message = message;
    status.endedAt = this.now().toISOString();
    this.o.logger?.info({ jobId: status.jobId, state, cycles: status.cycles, forecastSeconds: status.forecast?.seconds }, `final sync convergence: ${message}`);
    return status;
  }

  private async loop(status: ConvergeStatus, maxCycles: number): Promise<ConvergeStatus> {
    const { jobId } = status;
    const bound = status.maxFinalSyncSeconds;
    // A cycle already running counts: wait for it before the first forecast.
    if (this.engine.isRunning(jobId)) await this.engine.runNow(jobId);
    let f = this.record(status, null);
    if (f && f.seconds <= bound) return this.end(status, 'converged', `the final sync fits: ~${formatSeconds(f.seconds)} ≤ ${formatSeconds(bound)}`);
    let best = Infinity;
    let stalls = 0;
    while (status.cycles < maxCycles) {
      const before = this.engine.getJob(jobId);
      if (before.state !== 'waiting' && before.state !== 'syncing') return this.end(status, 'failed', `job ${jobId} is ${before.state}; no more cycles run`);
      this.engine.requestSync(jobId);
      await this.engine.runNow(jobId);
      status.cycles++;
      const job = this.engine.getJob(jobId);
      if (job.state !== 'waiting') {
        return this.end(status, 'failed', job.error ? `cycle failed in ${job.error.step}: ${job.error.message}` : `job ${jobId} is ${job.state}; no more cycles run`);
      }
      const cycleId = this.engine.state.listCycles(jobId, 1)[0]?.id ?? null;
      f = this.record(status, cycleId);
      if (!f) continue; // not measurable yet (e.g. the first incremental after the full moved nothing)
      if (f.seconds <= bound) return this.end(status, 'converged', `the final sync fits: ~${formatSeconds(f.seconds)} ≤ ${formatSeconds(bound)} after ${status.cycles} cycle${status.cycles === 1 ? '' : 's'}`);
      const shrinking = f.seconds <= SHRINK * best;
      best = Math.min(best, f.seconds);
      stalls = shrinking ? 0 : stalls + 1;
      if (stalls >= STALLS) {
        return this.end(status, 'unreachable', `unreachable: the final sync stopped shrinking (forecasts ${status.steps.filter((s) => s.cycleId).map((s) => s.forecastSeconds === null ? '?' : formatSeconds(s.forecastSeconds)).join(', ')} ` +
          `against the ${formatSeconds(bound)} bound): the change rate is not falling below what the cycles can carry; ${measured(f)}`);
      }
      if (f.fixedSeconds >= bound) {
        return this.end(status, 'unreachable', `unreachable: the fixed part of a cycle alone (connect, snapshot, plan, commit, snapshot removal) takes ${formatSeconds(f.fixedSeconds)}, ` +
          `more than the ${formatSeconds(bound)} bound; ${measured(f)}`);
      }
    }
    return this.end(status, 'unreachable', `unreachable: the final sync did not fit in ${formatSeconds(bound)} after ${maxCycles} cycles; ${f ? measured(f) : 'no forecast'}`);
  }
}

/** The measured rates an unreachable bound is reported with. */
function measured(f: FinalSyncForecast): string {
  return `change rate per cycle ${f.rates.map((r) => `${formatSize(r.bytesPerHour)}/h`).join(', ')} (newest first), throughput ${formatRate(f.throughput)}, ` +
    `fixed part ${formatSeconds(f.fixedSeconds)}, forecast ~${formatSeconds(f.seconds)}`;
}
