import { parseChangeId } from '../vsphere/index.ts';
import { UserError } from '../util/errors.ts';

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

/**
 * The cycle snapshot's disks must all carry a changeId: one without is a disk whose change tracking
 * is not active (ESXi starts tracking at the first stun after CBT is enabled on a running VM, and
 * that snapshot has none), or CBT was turned off since. Its changed areas cannot be queried. The
 * error is transient: removing this cycle's snapshot is a stun, so a retry normally finds changeIds.
 */
export function requireChangeIds(vmRef: string, jobId: string, disks: readonly { key: number; label: string; changeId: string | null }[]): void {
  const off = disks.filter((d) => !d.changeId);
  if (!off.length) return;
  throw new UserError('VC_CBT_NOT_ACTIVE',
    `change tracking is not active on ${off.map((d) => `disk ${d.key} (${d.label})`).join(', ')} of VM ${vmRef}: the cycle snapshot carries no changeId. ` +
    'ESXi starts tracking only at a stun (snapshot create and remove, power cycle) after CBT is enabled on a running VM, so CBT was enabled without one, or turned off since',
    `vmlift retries the cycle (removing its snapshot was such a stun); if the job still ends in error, CBT is off: turn it on with \`vmlift vc cbt enable ${vmRef}\` and resume with \`vmlift job resume ${jobId}\``,
    { transient: true });
}
