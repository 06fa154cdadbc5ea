import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/fsync.ts';
import { StoreError } from './types.ts';
import type { DiskSpec } from '../model/images.ts';

/** cycle.json: what an open cycle is (it never changes while the cycle is open). */
export interface CycleRecord {
  sourceId: string;
  cycleId: string;
  baseImageId: string | null;
  disks: DiskSpec[];
  /** Per disk, the base image's disk it started from (null: empty); absent in records written before it was kept. */
  baseDisks?: (number | null)[];
  chunkSize: number;
  createdAt: string;
}

/** The disks a caller asks a cycle for, checked: numbered 0..n-1 once each, capacities multiples of 512; sorted. */
const DISKS_FIX = 'number the disks 0..n-1 and give their sizes in bytes';

export function validateDisks(disks: unknown): DiskSpec[] {
  if (!Array.isArray(disks) || disks.length === 0) throw new StoreError('BAD_DISK', 'a cycle needs at least one disk', { fix: DISKS_FIX });
  const seen = new Set<number>();
  for (const d of disks as DiskSpec[]) {
    if (!Number.isSafeInteger(d?.disk) || d.disk < 0 || d.disk >= disks.length || seen.has(d.disk)) {
      throw new StoreError('BAD_DISK', `disk numbers must be 0..${disks.length - 1}, each once (got ${JSON.stringify(d?.disk)})`, { fix: DISKS_FIX });
    }
    if (!Number.isSafeInteger(d.capacity) || d.capacity <= 0 || d.capacity % 512 !== 0) {
      throw new StoreError('BAD_DISK', `disk ${d.disk}: capacity must be a positive multiple of 512 bytes (got ${JSON.stringify(d.capacity)})`, { fix: DISKS_FIX });
    }
    seen.add(d.disk);
  }
  return [...(disks as DiskSpec[])].sort((a, b) => a.disk - b.disk)
    .map((d) => ({ disk: d.disk, capacity: d.capacity, ...(d.label !== undefined ? { label: String(d.label) } : {}) }));
}

/** `baseDisks` as a caller gives it, checked against the disks: one entry per disk, each null or a disk number. */
export function validateBaseDisks(baseDisks: unknown, disks: readonly DiskSpec[]): (number | null)[] | undefined {
  if (baseDisks === undefined) return undefined;
  const fix = 'give one entry per disk: the base image\'s disk number it starts from, or null for an empty disk';
  if (!Array.isArray(baseDisks) || baseDisks.length !== disks.length) {
    throw new StoreError('BAD_DISK', `baseDisks needs ${disks.length} entries, one per disk`, { fix });
  }
  for (const [i, b] of baseDisks.entries()) {
    if (b !== null && (!Number.isSafeInteger(b) || b < 0)) throw new StoreError('BAD_DISK', `baseDisks[${i}] must be a disk number or null (got ${JSON.stringify(b)})`, { fix });
  }
  return baseDisks as (number | null)[];
}

/** The record of the cycle in folder `dir`, or null when no cycle is open there. */
export async function readCycleRecord(dir: string): Promise<CycleRecord | null> {
  try {
    return JSON.parse(await readFile(join(dir, 'cycle.json'), 'utf8')) as CycleRecord;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    return null;
  }
}

/** Written last when a cycle folder is created: a folder without it holds no open cycle. */
export function writeCycleRecord(dir: string, rec: CycleRecord): Promise<void> {
  return writeFileAtomic(join(dir, 'cycle.json'), JSON.stringify(rec));
}
