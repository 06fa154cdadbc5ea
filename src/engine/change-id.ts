/**
 * A VMware CBT changeId is `<uuid>/<sequence>`: the UUID identifies the change-tracking epoch of
 * the disk (a new UUID means CBT was reset and earlier ids are meaningless), the sequence grows.
 */
export interface ParsedChangeId { uuid: string; seq: number }

export function parseChangeId(id: string): ParsedChangeId | null {
  const slash = id.lastIndexOf('/');
  if (slash <= 0) return null;
  const seq = Number(id.slice(slash + 1));
  if (!Number.isInteger(seq) || seq < 0) return null;
  return { uuid: id.slice(0, slash), seq };
}

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
  return { mode: 'incremental', sinceChangeId: previous };
}
