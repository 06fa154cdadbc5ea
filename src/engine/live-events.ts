/**
 * GET /v1/events: server-sent events of the connector's jobs (any API client may follow it, e.g.
 * `curl -N -H "authorization: Bearer …"`). Each second while someone listens, one `jobs` event when
 * anything changed: every job with its live status, the throughput it reads now (bytes of the last
 * seconds, not the cycle's average) and its last cycle, plus a summary (jobs by state, throughput now,
 * bytes sent today, errors needing attention). Nothing is computed while no one listens.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { JobEngine } from './jobs.ts';
import { JOB_STATES, type DrillRecord } from '../state/types.ts';
import type { DrillReport } from '../transfer/contract.ts';

interface Sample { t: number; done: number; cycleId: string }

/** What a job's finished cycles give the stream, and the job's facts it was read under. */
interface CycleSummary { key: string; bytesToday: number; lastCycle: JobsEvent['jobs'][number]['lastCycle'] }

/** A job's finished cycles change only when its record, its run, its cycle or its step does (or the day). */
const CYCLES_REREAD_MS = 30_000;

export interface JobsEvent {
  jobs: {
    id: string; name: string; state: string; workgroupId: string | null; nextSyncAt: string | null;
    error: unknown; settings: unknown; running: boolean; live: unknown; throughput: number;
    lastCycle: { kind: string; state: string; endedAt: string | null; wireBytes: number; imageId: string | null } | null;
    /** The job's newest drill: its state, the step under way and the steps done (the report itself is in GET /v1/jobs/ID). */
    drill: LiveDrill | null;
  }[];
  summary: { byState: Record<string, number>; throughput: number; bytesToday: number; errors: number };
}

export interface LiveDrill {
  id: string; state: string; verdict: string | null;
  current: { step: string; startedAt: string } | null;
  steps: { step: string; ok: boolean; seconds: number }[];
}

function liveDrill(d: DrillRecord | undefined): LiveDrill | null {
  if (!d) return null;
  const r = d.report as Partial<DrillReport>;
  return {
    id: d.id, state: d.state, verdict: d.verdict, current: d.endedAt ? null : r.current ?? null,
    steps: (r.steps ?? []).map((x) => ({ step: x.step, ok: x.ok, seconds: x.seconds })),
  };
}

export class LiveEvents {
  private readonly clients = new Set<ServerResponse>();
  private timer: NodeJS.Timeout | undefined;
  private last = '';
  private readonly samples = new Map<string, Sample[]>();
  private beats = 0;
  private readonly cycleSummaries = new Map<string, CycleSummary>();

  constructor(private readonly engine: JobEngine, private readonly tickMs = 1000) {}

  open(req: IncomingMessage, res: ServerResponse): void {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    // Browsers reconnect after this many ms when the connector goes away (a restart).
    res.write('retry: 1500\n\n');
    res.write(`event: jobs\ndata: ${this.build()}\n\n`);
    this.clients.add(res);
    req.on('close', () => { this.clients.delete(res); if (!this.clients.size) this.stop(); });
    this.timer ??= setInterval(() => this.tick(), this.tickMs);
    this.timer.unref();
  }

  close(): void {
    this.stop();
    for (const c of this.clients) c.end();
    this.clients.clear();
  }

  private stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private tick(): void {
    const data = this.build();
    if (data !== this.last) {
      this.last = data;
      for (const c of this.clients) c.write(`event: jobs\ndata: ${data}\n\n`);
    } else if (++this.beats % 15 === 0) {
      for (const c of this.clients) c.write(': keep-alive\n\n');
    }
  }

  /** Bytes per second read over the last ~3 s of the job's running cycle. */
  private throughput(id: string, live: { cycleId: string; disks: { done: number }[] } | undefined, t: number): number {
    if (!live) { this.samples.delete(id); return 0; }
    const done = live.disks.reduce((n, d) => n + d.done, 0);
    const list = (this.samples.get(id) ?? []).filter((s) => s.cycleId === live.cycleId && t - s.t <= 3000);
    list.push({ t, done, cycleId: live.cycleId });
    this.samples.set(id, list);
    const first = list[0]!;
    return t > first.t ? Math.max(0, ((done - first.done) * 1000) / (t - first.t)) : 0;
  }

  /**
   * Bytes sent today and the last finished cycle: read again from the state only when the job's record,
   * run, cycle or step changed (a cycle that ends changes them), the day turned, or CYCLES_REREAD_MS
   * passed; each second otherwise would read N × 30 cycle rows for nothing.
   */
  private cycleSummary(job: { id: string; updatedAt: string }, live: { cycleId: string; step: string } | undefined, today: string, t: number): CycleSummary {
    const key = `${job.updatedAt}|${live?.cycleId ?? ''}|${live?.step ?? ''}|${today}|${Math.floor(t / CYCLES_REREAD_MS)}`;
    const had = this.cycleSummaries.get(job.id);
    if (had?.key === key) return had;
    const cycles = this.engine.state.listCycles(job.id, 30);
    let bytesToday = 0;
    for (const c of cycles) if (c.endedAt?.startsWith(today)) bytesToday += c.wireBytes;
    const c = cycles.find((x) => x.state !== 'running') ?? null;
    const s = { key, bytesToday, lastCycle: c ? { kind: c.kind, state: c.state, endedAt: c.endedAt, wireBytes: c.wireBytes, imageId: c.imageId } : null };
    this.cycleSummaries.set(job.id, s);
    return s;
  }

  private build(): string {
    const t = Date.now();
    const today = new Date(t).toISOString().slice(0, 10);
    const byState: Record<string, number> = Object.fromEntries(JOB_STATES.map((s) => [s, 0]));
    let throughput = 0, bytesToday = 0, errors = 0;
    const jobs: JobsEvent['jobs'] = [];
    const listed = this.engine.listJobs();
    for (const j of listed) {
      const live = this.engine.live(j.id);
      const rate = this.throughput(j.id, live, t);
      const cs = this.cycleSummary(j, live, today, t);
      bytesToday += cs.bytesToday;
      byState[j.state] = (byState[j.state] ?? 0) + 1;
      if (j.state === 'error') errors++;
      throughput += rate;
      jobs.push({
        id: j.id, name: j.name, state: j.state, workgroupId: j.workgroupId, nextSyncAt: j.nextSyncAt, error: j.error, settings: j.settings,
        running: this.engine.isRunning(j.id), live: live ?? null, throughput: Math.round(rate), lastCycle: cs.lastCycle,
        drill: liveDrill(this.engine.state.listDrills(j.id, 1)[0]),
      });
    }
    if (this.cycleSummaries.size > listed.length) {
      const ids = new Set(listed.map((j) => j.id));
      for (const id of this.cycleSummaries.keys()) if (!ids.has(id)) this.cycleSummaries.delete(id);
    }
    const ev: JobsEvent = { jobs, summary: { byState, throughput: Math.round(throughput), bytesToday, errors } };
    return JSON.stringify(ev);
  }
}
