import type { Logger } from 'pino';
import type { JobEngine } from './jobs.ts';

/**
 * Starts due cycles: jobs in `syncing`/`completing` (a start, a manual sync, a complete, or a
 * cycle cut short by a restart) and `waiting` jobs whose interval has passed. One cycle per job at a
 * time; how many disks are read at once is bounded by the engine's disk limits.
 */
export class Scheduler {
  private timer: NodeJS.Timeout | undefined;
  private stopped = true;

  constructor(private readonly engine: JobEngine, private readonly o: { tickMs?: number; logger: Logger; maxConcurrentJobs?: number }) {}

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    const loop = () => {
      if (this.stopped) return;
      try {
        this.tick();
      } catch (e) {
        this.o.logger.error({ err: (e as Error).message }, 'scheduler tick failed');
      }
      this.timer = setTimeout(loop, this.o.tickMs ?? 1000);
    };
    loop();
  }

  /** Start every due job now (bounded by maxConcurrentJobs); returns the ids started. */
  tick(): string[] {
    const max = this.o.maxConcurrentJobs ?? 100;
    const running = this.engine.state.listJobs().filter((j) => this.engine.isRunning(j.id)).length;
    const started: string[] = [];
    for (const job of this.engine.dueJobs().slice(0, Math.max(0, max - running))) {
      started.push(job.id);
      this.engine.runNow(job.id).catch((e) => this.o.logger.error({ jobId: job.id, err: (e as Error).message }, 'cycle crashed'));
    }
    return started;
  }

  async stop(opts: { abort?: boolean } = {}): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.engine.drain(opts.abort);
  }
}
