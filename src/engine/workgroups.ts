import { UserError, errorMessage } from '../util/errors.ts';
import { assertId } from '../util/ids.ts';
import { StateError, WORKGROUP_MAX_MEMBERS, type JobRecord, type WorkgroupRecord } from '../state/types.ts';
import type { JobEngine } from './jobs.ts';
import type { JobDrills } from './drills.ts';

export interface MemberResult { jobId: string; ok: boolean; state?: string; reason?: string }

/** The last drill of a member, for `workgroup show`. */
export interface MemberDrill { id: string; imageId: string; state: string; verdict: string | null; at: string }

export type BatchAction = 'start' | 'sync' | 'pause' | 'resume' | 'complete';

/** Workgroups: up to 50 sources, one workgroup per source, batch actions with a per-source result. */
export class Workgroups {
  constructor(private readonly engine: JobEngine) {}

  create(id: string, name?: string): WorkgroupRecord {
    return this.wrap(() => this.engine.state.createWorkgroup(assertId(id, 'workgroup id'), name ?? id));
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
        return { jobId, ok: false, reason: errorMessage(e) };
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
        return { jobId, ok: false, state: this.engine.state.getJob(jobId)?.state, reason: errorMessage(e) };
      }
    });
  }

  /** Drill every member's newest image; the receiver runs them one at a time. A member that cannot be drilled is reported. */
  async drill(id: string, drills: JobDrills): Promise<MemberResult[]> {
    const wg = this.get(id);
    const out: MemberResult[] = [];
    for (const jobId of wg.members) {
      try {
        const d = await drills.start(jobId);
        out.push({ jobId, ok: true, state: `drill ${d.state} (${d.id}, image ${d.imageId})` });
      } catch (e) {
        out.push({ jobId, ok: false, state: this.engine.state.getJob(jobId)?.state, reason: errorMessage(e) });
      }
    }
    return out;
  }

  status(id: string): { workgroup: WorkgroupRecord; members: { jobId: string; state: string; error: string | null; live?: unknown; drill: MemberDrill | null }[] } {
    const wg = this.get(id);
    return {
      workgroup: wg,
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
      case 'start': return this.engine.start(jobId);
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
      if (e instanceof StateError) throw new UserError(e.code, e.message, 'see `vmlift workgroup ls`');
      throw e;
    }
  }
}
