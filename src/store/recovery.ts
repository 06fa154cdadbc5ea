import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { StoreError } from './types.ts';
import { pidAlive } from './pins.ts';
import { readCycleRecord, type CycleRecord } from './cycle-record.ts';
import type { DiskSpec } from '../model/images.ts';

/**
 * Reopening a cycle left open on disk (by a crash, a kill, a lost connection or a detach) to resume
 * it. The caller must ask for the same disks (and the same base and base disks, when it names them), and no live
 * process but this one may be writing it; this process then owns it. What the reopened cycle holds
 * is what its journals made durable (journals.ts): the writes after its last flush are gone.
 * Returns null when no cycle is open in `dir`.
 */
export async function reopenCycle(dir: string, src: string, cid: string,
  want: { disks: DiskSpec[]; baseImageId?: string | null; baseDisks?: (number | null)[] }): Promise<CycleRecord | null> {
  const rec = await readCycleRecord(dir);
  if (!rec) return null;
  const { disks } = want;
  const same = rec.disks.length === disks.length && rec.disks.every((d, i) => d.disk === disks[i]!.disk && d.capacity === disks[i]!.capacity);
  if (!same) {
    throw new StoreError('CYCLE_MISMATCH', `cycle ${cid} of source ${src} is open with disks ${JSON.stringify(rec.disks.map((d) => [d.disk, d.capacity]))}; `
      + `resume it with the same disks or abort it`, { fix: 'resume the cycle with the disks it was begun with, or abort it' });
  }
  if (want.baseImageId !== undefined && want.baseImageId !== rec.baseImageId) {
    throw new StoreError('CYCLE_MISMATCH', `cycle ${cid} of source ${src} is open on base image ${rec.baseImageId ?? 'none'}, not ${want.baseImageId ?? 'none'}`,
      { fix: 'resume the cycle on the base image it was begun on, or abort it' });
  }
  if (want.baseDisks !== undefined && rec.baseImageId !== null && rec.baseDisks !== undefined
    && JSON.stringify(want.baseDisks) !== JSON.stringify(rec.baseDisks)) {
    throw new StoreError('CYCLE_MISMATCH', `cycle ${cid} of source ${src} is open with base disks ${JSON.stringify(rec.baseDisks)}, not ${JSON.stringify(want.baseDisks)}`,
      { fix: 'resume the cycle with the base disks it was begun with, or abort it' });
  }
  await claimOwner(dir, src, cid);
  return rec;
}

async function claimOwner(dir: string, src: string, cid: string): Promise<void> {
  const ownerPath = join(dir, 'owner');
  const pid = Number((await readFile(ownerPath, 'utf8').catch(() => '')).trim());
  if (pid && pid !== process.pid && pidAlive(pid)) {
    throw new StoreError('CYCLE_BUSY', `cycle ${cid} of source ${src} is being written by process ${pid}`,
      { fix: `wait for process ${pid} to end: one receiver at a time may serve a data folder`, transient: true });
  }
  await writeFile(ownerPath, String(process.pid));
}
