import { parseChangeId } from '../vsphere/index.ts';

export type SyncPlan =
  | { mode: 'incremental'; sinceChangeId: string }
  | { mode: 'full'; reason: string };

/** Decide whether a disk can sync incrementally from `previous` to the snapshot's `current` changeId. */
export function planDiskSync(previous: string | null, current: string | null, baseImageOnReceiver: boolean): SyncPlan {
  if (!current) return { mode: 'full', reason: 'CBT is off for this disk (no changeId at the snapshot)' };
  if (!previous) return { mode: 'full', reason: 'first cycle of this disk (no changeId recorded)' };
  if (!baseImageOnReceiver) return { mode: 'full', reason: 'the receiver does not hold the previous image' };
  const p = parseChangeId(previous);
  const c = parseChangeId(current);
  if (!p || !c) return { mode: 'full', reason: `unparseable changeId (${previous} → ${current})` };
  if (p.uuid !== c.uuid) return { mode: 'full', reason: `CBT was reset (changeId epoch ${p.uuid} → ${c.uuid})` };
  if (c.seq < p.seq) return { mode: 'full', reason: `changeId went backwards (${previous} → ${current})` };
  return { mode: 'incremental', sinceChangeId: previous };
}
