/**
 * Drills of jobs (`vmlift job drill`, `workgroup drill`): ask the receiver to inspect, convert and
 * boot-test a job's newest image while the job keeps syncing, follow it to its end, and keep the
 * result per job (state) with its report and console PNG in `<home>/drills/<job>/<drill>/`.
 * A drill never touches the job's state, settings or next sync: it only reads the job record.
 */
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { UserError, errorMessage } from '../util/errors.ts';
import { assertId } from '../util/ids.ts';
import type { DrillRecord, StateStore } from '../state/types.ts';
import type { DrillReport } from '../transfer/contract.ts';

/** What the engine needs of the receiver for drills (cli/ wires it over the source's control connection). */
export interface DrillService {
  start(sourceId: string, imageId?: string): Promise<DrillReport>;
  get(sourceId: string, drillId: string): Promise<DrillReport>;
  screenshot(sourceId: string, drillId: string): Promise<Buffer>;
}

export interface JobDrillsOptions {
  state: StateStore;
  service: DrillService;
  /** Connector-side folder for the reports (`<home>/drills`); null keeps them in the state only. */
  reportRoot: string | null;
  logger: Logger;
  /** How often a running drill is polled (default 3 s). */
  pollMs?: number;
}

const ENDED = new Set(['passed', 'abnormal']);

const progressKey = (r: Partial<DrillReport>): string => `${r.state}|${r.current?.step ?? ''}|${r.steps?.length ?? 0}`;

export class JobDrills {
  private readonly followed = new Map<string, Promise<DrillRecord>>();
  private closed = false;
  private readonly stop = new AbortController();

  constructor(private readonly o: JobDrillsOptions) {}

  /** Follow the drills a previous connector process left unfinished. */
  resume(): void {
    for (const d of this.o.state.activeDrills()) this.follow(d);
  }

  /** Start a drill of the job's newest image (or `imageId`); resolves once the receiver queued it. */
  async start(jobId: string, imageId?: string): Promise<DrillRecord> {
    const job = this.o.state.getJob(jobId);
    if (!job) throw new UserError('NO_JOB', `no job ${jobId}`, 'list jobs with `vmlift job ls`');
    const active = this.o.state.listDrills(jobId, 5).find((d) => !ENDED.has(d.state));
    if (active) throw new UserError('DRILL_RUNNING', `job ${jobId} has a drill ${active.state} already (${active.id}, image ${active.imageId})`, 'wait for it: `vmlift job show` shows its result');
    const r = await this.o.service.start(job.sourceId, imageId === undefined ? undefined : assertId(imageId, 'image id'));
    const rec = this.o.state.addDrill({ id: assertId(r.drillId, 'drill id'), jobId, imageId: r.imageId, state: r.state, requestedAt: r.requestedAt, report: r as unknown as Record<string, unknown> });
    this.o.logger.info({ jobId, drillId: rec.id, imageId: rec.imageId }, 'drill started');
    this.follow(rec);
    return rec;
  }

  /** Resolves when the drill ended (passed or abnormal) and its report is saved. */
  wait(drillId: string): Promise<DrillRecord> {
    const p = this.followed.get(drillId);
    if (!p) throw new UserError('NO_DRILL', `drill ${drillId} is not running here`, 'see `vmlift job show` for its result');
    return p;
  }

  last(jobId: string): DrillRecord | null {
    return this.o.state.listDrills(jobId, 1)[0] ?? null;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.stop.abort();
    await Promise.allSettled([...this.followed.values()]);
  }

  private follow(rec: DrillRecord): void {
    if (this.followed.has(rec.id)) return;
    const p = this.poll(rec).finally(() => this.followed.delete(rec.id));
    p.catch(() => undefined);
    this.followed.set(rec.id, p);
  }

  private async poll(rec: DrillRecord): Promise<DrillRecord> {
    const job = this.o.state.getJob(rec.jobId);
    if (!job) return rec;
    const log = this.o.logger.child({ jobId: rec.jobId, drillId: rec.id });
    let current = rec;
    let failures = 0;
    while (!this.closed) {
      let r: DrillReport;
      try {
        r = await this.o.service.get(job.sourceId, rec.id);
        failures = 0;
      } catch (e) {
        // The receiver restarting or a dropped link: keep following; the drill's own outcome is the receiver's.
        if (++failures % 10 === 1) log.warn({ err: errorMessage(e) }, 'cannot read the drill from the receiver; trying again');
        await this.sleep();
        continue;
      }
      // A change of state, of the step under way or of the steps done is kept at once: the console shows each live.
      if (progressKey(r) !== progressKey(current.report as unknown as DrillReport) || r.state !== current.state || ENDED.has(r.state)) {
        current = this.o.state.updateDrill(rec.id, { state: r.state, report: r as unknown as Record<string, unknown> });
      }
      if (ENDED.has(r.state)) {
        const reportDir = await this.saveReport(job.id, job.sourceId, r).catch((e: unknown) => {
          log.warn({ err: errorMessage(e) }, 'cannot save the drill report in the connector home; it stays on the receiver');
          return null;
        });
        current = this.o.state.updateDrill(rec.id, { verdict: r.verdict, endedAt: r.endedAt, reportDir });
        log.info({ verdict: r.verdict, failure: r.failure?.code, secondsToLogin: r.secondsToLogin }, r.verdict ?? 'drill ended');
        return current;
      }
      await this.sleep();
    }
    return current;
  }

  private async saveReport(jobId: string, sourceId: string, r: DrillReport): Promise<string | null> {
    if (!this.o.reportRoot) return null;
    const dir = join(this.o.reportRoot, assertId(jobId, 'job id'), assertId(r.drillId, 'drill id'));
    const tmp = `${dir}.tmp`;
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true, mode: 0o700 });
    await writeFile(join(tmp, 'report.json'), JSON.stringify(r, null, 2), { mode: 0o600 });
    if (r.screenshot) await writeFile(join(tmp, 'console.png'), await this.o.service.screenshot(sourceId, r.drillId), { mode: 0o600 });
    await rm(dir, { recursive: true, force: true });
    await rename(tmp, dir);
    return dir;
  }

  private sleep(): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, this.o.pollMs ?? 3000);
      this.stop.signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }
}
