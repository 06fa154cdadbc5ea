/** QueryChangedDiskAreas paging (docs/design.md step 4) and changeId handling. */
import { UserError } from '../util/errors.ts';
import type { VimSession } from './session.ts';
import { queryChangedDiskAreas } from './methods.ts';
import { VimFault } from './errors.ts';

/**
 * A CBT changeId is "<uuid>/<sequence>", with vCenter's UUID part written as spaced hex bytes
 * ("52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/81"); a new UUID means change tracking was reset.
 * Only the last '/' splits; the UUID part is kept as vCenter wrote it.
 */
export interface ChangeId { uuid: string; seq: number }

export function parseChangeId(id: string): ChangeId | null {
  const slash = id.lastIndexOf('/');
  if (slash <= 0) return null;
  const seq = Number(id.slice(slash + 1));
  if (!/^\d+$/.test(id.slice(slash + 1)) || !Number.isSafeInteger(seq)) return null;
  return { uuid: id.slice(0, slash), seq };
}

export interface Area { offset: number; length: number }
export interface ChangedAreas { areas: Area[]; bytes: number; calls: number }

/**
 * Loops QueryChangedDiskAreas(snapshot, deviceKey, startOffset, changeId) from 0 to the
 * capacity, advancing startOffset = result.startOffset + result.length. Adjacent areas are merged.
 */
export async function changedAreas(s: VimSession, vm: { type: 'VirtualMachine'; value: string }, snapshot: { type: 'VirtualMachineSnapshot'; value: string },
  deviceKey: number, capacity: number, changeId: string): Promise<ChangedAreas> {
  if (changeId !== '*' && !parseChangeId(changeId)) {
    throw new UserError('VC_CHANGE_ID', `"${changeId}" is not a CBT changeId`, 'give a changeId as a snapshot disk shows it (`vmlift vc show VM`, e.g. "52 de c0 d9 b9 43 9d 10-61 d5 4c 1b e9 7b 65 63/81", quoted), or "*" for all allocated areas');
  }
  const areas: Area[] = [];
  let start = 0;
  let calls = 0;
  while (start < capacity) {
    let r;
    try {
      r = await queryChangedDiskAreas(s, vm, snapshot, deviceKey, start, changeId);
    } catch (e) {
      if (e instanceof VimFault) throw cbtFault(e, changeId, deviceKey, snapshot.value);
      throw e;
    }
    calls++;
    for (const a of r.changedArea) {
      const last = areas[areas.length - 1];
      if (last && last.offset + last.length === a.start) last.length += a.length;
      else areas.push({ offset: a.start, length: a.length });
    }
    const next = r.startOffset + r.length;
    if (next <= start) throw new Error(`QueryChangedDiskAreas made no progress at offset ${start} of disk ${deviceKey}`);
    start = next;
  }
  return { areas, bytes: areas.reduce((n, a) => n + a.length, 0), calls };
}

function cbtFault(e: VimFault, changeId: string, key: number, snapshot: string): UserError {
  // vSphere before 7.0U3 says FileFault; 7.0U3 and later say InvalidArgument on startOffset
  const about = `${e.detail.invalidProperty ?? ''} ${e.message}`;
  if (e.type === 'FileFault' || (e.type === 'InvalidArgument' && /startOffset/.test(about))) {
    return new UserError('VC_CBT_OFF', `vCenter cannot report changed areas of disk ${key}: change tracking is not active on it (${e.message})`,
      'enable CBT with `vmlift vc cbt enable VM` and take a new snapshot; the next cycle is a full one', { cause: e });
  }
  // The API reference lists NotFound for a snapshot that does not exist; a moref the server no longer knows is ManagedObjectNotFound.
  if (e.type === 'NotFound' || (e.type === 'ManagedObjectNotFound' && e.detail.obj === snapshot)) {
    return new UserError('VC_SNAPSHOT_GONE', `snapshot ${snapshot} no longer exists: it was removed (by someone or another tool) while vmlift read its changed areas of disk ${key}`,
      'run the cycle again: it takes a new snapshot', { cause: e });
  }
  if (e.type === 'InvalidArgument' && /changeId/.test(about)) {
    return new UserError('VC_CHANGE_ID_INVALID', `vCenter does not know changeId ${changeId} for disk ${key} (CBT was reset or the id is from another disk)`,
      'run a full cycle: query with changeId "*" and record the new snapshot changeId', { cause: e });
  }
  return new UserError('VC_QUERY_CHANGED_AREAS', `QueryChangedDiskAreas failed for disk ${key}: ${e.type}: ${e.message}`, 'check the VM, the snapshot and the disk key', { cause: e });
}
