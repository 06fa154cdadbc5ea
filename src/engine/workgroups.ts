import { UserError, errorMessage, errorReport } from '../util/errors.ts';
import { assertId } from '../util/ids.ts';
import { StateError, WORKGROUP_MAX_MEMBERS, type JobRecord, type JobSettings, type JobState, type WorkgroupRecord } from '../state/types.ts';
import type { PreflightCheck } from './services.ts';
import { description, workgroupName } from './names.ts';
import type { JobEngine } from './jobs.ts';
import type { JobDrills } from './drills.ts';

export interface MemberResult { jobId: string; ok: boolean; state?: string; reason?: string; code?: string; fix?: string }

/** How many members are in each job state (`workgroup ls` and `show`). */
export type StateCounts = Partial<Record<JobState, number>>;

/** A workgroup with the count of its members by state. */
export type WorkgroupSummary = WorkgroupRecord & { counts: StateCounts };

/** The settings `workgroup set` changes on every member. */
export const WORKGROUP_SETTINGS = ['bandwidthMbps', 'compression', 'checksum'] as const;

/** A vCenter preflight of a VM (the connector's vCenter session), for `workgroup start --dry-run`. */
export type Preflight = (vmRef: string) => Promise<PreflightCheck[]>;

function failed(jobId: string, e: unknown, state?: string): MemberResult {
  const r = errorReport(e);
  return { jobId, ok: false, ...(state ? { state } : {}), reason: r.message, code: r.code, ...(r.fix ? { fix: r.fix } : {}) };
}

/** The last drill of a member, for `workgroup show`. */
export interface MemberDrill { id: string; imageId: string; state: string; verdict: string | null; at: string }

export type BatchAction = 'start' | 'sync' | 'pause' | 'resume' | 'complete';

/** Workgroups: up to 50 sources, one workgroup per source, batch actions with a per-source result. */
export class Workgroups {
  constructor(private readonly engine: JobEngine) {}

  /** A name is checked against the display-name rules (names.ts); without one the id is the name. */
  create(id: string, name?: string, desc?: string): WorkgroupRecord {
    const wid = assertId(id, 'workgroup id');
    return this.wrap(() => this.engine.state.createWorkgroup(wid, name === undefined ? wid : workgroupName(name), description(desc ?? '')));
  }

  edit(id: string, patch: { name?: string; description?: string }): WorkgroupRecord {
    this.get(id);
    return this.engine.state.updateWorkgroup(id, {
      ...(patch.name !== undefined ? { name: workgroupName(patch.name) } : {}),
      ...(patch.description !== undefined ? { description: description(patch.description) } : {}),
    });
  }

  /**
   * Delete a workgroup; its jobs stay, as jobs of no workgroup. Refused while a member syncs (a cycle
   * runs, or is due: syncing, completing) unless `detach`, which removes the members first and leaves
   * their cycles running.
   */
  delete(id: string, opts: { detach?: boolean } = {}): { deleted: string; detached: string[] } {
    const wg = this.get(id);
    const busy = wg.members.filter((j) => {
      const job = this.engine.getJob(j);
      return this.engine.isRunning(j) || job.state === 'syncing' || job.state === 'completing';
    });
    if (busy.length && !opts.detach) {
      throw new UserError('WORKGROUP_BUSY', `workgroup ${id} has ${busy.length} member(s) syncing (${busy.join(', ')}); deleting it now would leave them running unseen`,
        `pause them first (\`vmlift workgroup pause ${id}\`) or wait for their cycles to end, or pass --detach to remove the members from the workgroup first (they go on as jobs of no workgroup): \`vmlift workgroup delete ${id} --detach\``);
    }
    for (const j of wg.members) this.engine.state.removeFromWorkgroup(id, j);
    this.engine.state.deleteWorkgroup(id);
    return { deleted: id, detached: wg.members };
  }

  /** Bandwidth, compression and checksum for every member (a running cycle takes bandwidth and compression at once). */
  set(id: string, patch: Partial<JobSettings>): MemberResult[] {
    const wg = this.get(id);
    const other = Object.keys(patch).filter((k) => !(WORKGROUP_SETTINGS as readonly string[]).includes(k));
    if (other.length) {
      throw new UserError('BAD_SETTING', `workgroup set changes bandwidth, compression and checksum; not ${other.join(', ')}`, 'change the other settings per job with `vmlift job set`');
    }
    if (!Object.keys(patch).length) throw new UserError('BAD_SETTING', 'workgroup set was given no setting', 'pass --bandwidth, --compression or --checksum');
    return wg.members.map((jobId) => {
      try {
        return { jobId, ok: true, state: this.engine.updateSettings(jobId, patch).state };
      } catch (e) {
        return failed(jobId, e, this.engine.state.getJob(jobId)?.state);
      }
    });
  }

  /** Every workgroup with its counts by state. */
  summaries(): WorkgroupSummary[] {
    return this.list().map((w) => ({ ...w, counts: this.counts(w) }));
  }

  counts(wg: WorkgroupRecord): StateCounts {
    const out: StateCounts = {};
    for (const j of wg.members) {
      const s = this.engine.getJob(j).state;
      out[s] = (out[s] ?? 0) + 1;
    }
    return out;
  }

  /**
   * What `workgroup start` would do, changing nothing: each member that cannot start, with why and
   * the fix. A member still to run its first cycle is preflighted against vCenter when `preflight` is given.
   */
  async startDryRun(id: string, preflight?: Preflight): Promise<MemberResult[]> {
    const wg = this.get(id);
    const out: MemberResult[] = [];
    for (const jobId of wg.members) {
      const job = this.engine.getJob(jobId);
      const refusal = startRefusal(job);
      if (refusal) { out.push(failed(jobId, refusal, job.state)); continue; }
      const first = !this.engine.state.listCycles(jobId, 1000).some((c) => c.state === 'committed');
      if (preflight && job.vmRef && first && (job.state === 'created' || job.state === 'error')) {
        try {
          const bad = (await preflight(job.vmRef)).filter((c) => !c.ok);
          if (bad.length) {
            out.push({ jobId, ok: false, state: job.state, code: 'PREFLIGHT', reason: `preflight failed: ${bad.map((c) => c.message).join('; ')}`,
              ...(bad.some((c) => c.fix) ? { fix: bad.map((c) => c.fix).filter(Boolean).join('; ') } : {}) });
            continue;
          }
        } catch (e) {
          out.push(failed(jobId, e, job.state));
          continue;
        }
      }
      out.push({ jobId, ok: true, state: job.state === 'created' || job.state === 'error' ? 'would start' : `${job.state} (already started)` });
    }
    return out;
  }

  get(id: string): WorkgroupRecord {
    const wg = this.engine.state.getWorkgroup(id);
    if (!wg) throw new UserError('NO_WORKGROUP', `no workgroup named ${id}`, 'list workgroups with `vmlift workgroup ls`');
    return wg;
  }

  list(): WorkgroupRecord[] { return this.engine.state.listWorkgroups(); }

  /** Add jobs; each that cannot join is listed with the reason, the others join. */
  add(id: string, jobIds: string[]): MemberResult[] {
    this.get(id);
    return jobIds.map((jobId) => {
      try {
        this.engine.getJob(jobId);
        this.engine.state.addToWorkgroup(id, jobId);
        return { jobId, ok: true };
      } catch (e) {
        return failed(jobId, e);
      }
    });
  }

  remove(id: string, jobIds: string[]): MemberResult[] {
    this.get(id);
    return jobIds.map((jobId) => {
      this.engine.state.removeFromWorkgroup(id, jobId);
      return { jobId, ok: true };
    });
  }

  /** Apply an action to every member; a member that cannot do it is reported, the rest go on. */
  batch(id: string, action: BatchAction): MemberResult[] {
    const wg = this.get(id);
    return wg.members.map((jobId) => {
      try {
        const job: JobRecord = this.apply(action, jobId);
        return { jobId, ok: true, state: job.state };
      } catch (e) {
        return failed(jobId, e, this.engine.state.getJob(jobId)?.state);
      }
    });
  }

  /** Drill every member's newest image; the receiver runs them one at a time. A member that cannot be drilled is reported. */
  async drill(id: string, drills: JobDrills): Promise<MemberResult[]> {
    const wg = this.get(id);
    const out: MemberResult[] = [];
    for (const jobId of wg.members) {
      // Refused here with the batch preview's own reason, rather than by the receiver in other words.
      const job = this.engine.state.getJob(jobId);
      const why = job ? drillRefusal(job, hasCommittedImage(this.engine.state, jobId)) : null;
      if (job && why) { out.push({ jobId, ok: false, state: job.state, reason: why }); continue; }
      try {
        const d = await drills.start(jobId);
        out.push({ jobId, ok: true, state: `drill ${d.state} (${d.id}, image ${d.imageId})` });
      } catch (e) {
        out.push({ jobId, ok: false, state: this.engine.state.getJob(jobId)?.state, reason: errorMessage(e) });
      }
    }
    return out;
  }

  status(id: string): { workgroup: WorkgroupRecord; counts: StateCounts; members: { jobId: string; state: string; error: string | null; live?: unknown; drill: MemberDrill | null }[] } {
    const wg = this.get(id);
    return {
      workgroup: wg,
      counts: this.counts(wg),
      members: wg.members.map((jobId) => {
        const j = this.engine.getJob(jobId);
        const d = this.engine.state.listDrills(jobId, 1)[0];
        const drill = d ? { id: d.id, imageId: d.imageId, state: d.state, verdict: d.verdict, at: d.endedAt ?? d.requestedAt } : null;
        return { jobId, state: j.state, error: j.error ? `${j.error.step}: ${j.error.message}` : null, live: this.engine.live(jobId), drill };
      }),
    };
  }

  static readonly maxMembers = WORKGROUP_MAX_MEMBERS;

  private apply(action: BatchAction, jobId: string): JobRecord {
    switch (action) {
      case 'start': {
        const refusal = startRefusal(this.engine.getJob(jobId));
        if (refusal) throw refusal;
        return this.engine.start(jobId);
      }
      case 'sync': return this.engine.requestSync(jobId);
      case 'pause': return this.engine.pause(jobId);
      case 'resume': return this.engine.resume(jobId);
      case 'complete': return this.engine.complete(jobId);
    }
  }

  private wrap<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (e instanceof StateError) throw new UserError(e.code, e.message, e.fix ?? 'see `vmlift workgroup ls`');
      throw e;
    }
  }
}

/** Why `start` would not start this job (null: it starts, or has started already). */
export function startRefusal(job: JobRecord): UserError | null {
  switch (job.state) {
    case 'completed': return new UserError('JOB_COMPLETED', `job ${job.id} is completed; it runs no more cycles`, 'create a new job to migrate the VM again, or remove it from the workgroup');
    case 'completing': return new UserError('ALREADY_COMPLETING', `job ${job.id} is completing (its final sync is running or queued)`, `wait for it: \`vmlift job show ${job.id}\``);
    case 'paused': return new UserError('JOB_PAUSED', `job ${job.id} is paused; start leaves a paused job as it is`, `resume it: \`vmlift job resume ${job.id}\` (or \`vmlift workgroup resume\`)`);
    default: return null;
  }
}

/** Whether a job committed an image (a drill needs one). */
export function hasCommittedImage(state: Pick<JobEngine['state'], 'listCycles'>, jobId: string): boolean {
  return state.listCycles(jobId, 1000).some((c) => c.state === 'committed');
}

/** Why a member cannot be drilled, or null. */
export function drillRefusal(job: JobRecord, hasImage: boolean): string | null {
  return hasImage ? null : `job ${job.id} has no image on the receiver yet`;
}
