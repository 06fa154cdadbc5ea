/**
 * What a workgroup batch would do, without doing it: per member, whether the action applies and, if
 * not, why (the same reasons the engine gives when it refuses). The console's confirm step shows it
 * before anything starts; `test/console/session-api.test.ts` keeps it equal to the real batch (drill: test/console/drill-browser.test.ts).
 */
import type { JobRecord } from '../state/types.ts';
import { drillRefusal, startRefusal, type MemberResult } from './workgroups.ts';

export type PreviewAction = 'start' | 'sync' | 'pause' | 'resume' | 'complete' | 'drill';

/** Why `action` is refused for `job`, or null when it applies. */
export function refusal(action: PreviewAction, job: JobRecord, hasImage: boolean): string | null {
  const s = job.state;
  switch (action) {
    case 'start':
      return startRefusal(job)?.message ?? null;
    case 'sync':
      if (s === 'completed') return `job ${job.id} is completed; it runs no more cycles`;
      return s === 'waiting' || s === 'syncing' || s === 'completing' ? null : `job ${job.id} is ${s}; a sync can start only when it is waiting`;
    case 'pause':
      return s === 'completed' ? `job ${job.id} is completed` : null;
    case 'resume':
      return null;
    case 'complete':
      if (s === 'completed') return `job ${job.id} is already completed`;
      if (s === 'completing') return `job ${job.id} is already completing (its final sync is running or queued)`;
      if (s === 'created') return `job ${job.id} has not synced yet`;
      return null;
    case 'drill':
      return drillRefusal(job, hasImage);
  }
}

export function previewBatch(members: JobRecord[], action: PreviewAction, hasImage: (jobId: string) => boolean): MemberResult[] {
  return members.map((j) => {
    const reason = refusal(action, j, hasImage(j.id));
    return reason ? { jobId: j.id, ok: false, state: j.state, reason } : { jobId: j.id, ok: true, state: j.state };
  });
}
