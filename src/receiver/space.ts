/**
 * Free space of the receiver's data folder: the room check before a cycle begins (its estimate
 * against free space minus a reserve) and the NO_SPACE error a full filesystem (ENOSPC, EDQUOT)
 * becomes, naming the free and needed bytes and the fix.
 */
import { statfsSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { UserError } from '../util/errors.ts';

/** Kept free on top of a cycle's estimate (indexes, journals, the commit's image files): 1% of the filesystem, 16 MiB to 1 GiB. */
export function spaceReserve(totalBytes: number): number {
  return Math.min(1 << 30, Math.max(16 << 20, Math.floor(totalBytes / 100)));
}

export interface SpaceFigures { free: number; total: number }

export async function freeSpace(dir: string): Promise<SpaceFigures> {
  const s = await statfs(dir);
  return { free: s.bavail * s.bsize, total: s.blocks * s.bsize };
}

const mib = (n: number): string => `${(n / (1 << 20)).toFixed(1)} MiB`;

/** A full data folder. HTTP 507 on the control port, an ERROR frame on the data port; not transient: space must be freed first. */
export class NoSpaceError extends UserError {
  constructor(readonly dir: string, readonly freeBytes: number, readonly neededBytes: number, what: string, cause?: unknown, atLeast = false) {
    super('NO_SPACE', `${what}: the receiver's data folder ${dir} has ${freeBytes} bytes (${mib(freeBytes)}) free, needs ${atLeast ? 'at least ' : ''}${neededBytes} bytes (${mib(neededBytes)})`,
      `free space in ${dir}, lower retention with --max-images, or move the receiver to a bigger data folder; then run the cycle again: it resumes where it stopped`,
      cause === undefined ? undefined : { cause });
  }
}

/** True when `e` or one of its causes is the filesystem saying it is full. */
export function isNoSpace(e: unknown): boolean {
  for (let cur: unknown = e, depth = 0; cur && depth < 8; depth++, cur = (cur as { cause?: unknown }).cause) {
    if (cur instanceof NoSpaceError) return true;
    const code = (cur as { code?: unknown }).code;
    if (code === 'ENOSPC' || code === 'EDQUOT') return true;
  }
  return false;
}

/** `e` as a NoSpaceError when the filesystem is full (with `needed` bytes and the free bytes now), else `e`. Synchronous: callers stop at once. */
export function asNoSpace(e: unknown, dir: string, needed: number, what: string, atLeast = false): unknown {
  if (e instanceof NoSpaceError || !isNoSpace(e)) return e;
  let free = 0;
  try { const s = statfsSync(dir); free = s.bavail * s.bsize; } catch { /* report 0 */ }
  return new NoSpaceError(dir, free, needed, what, e, atLeast);
}

/** Refuse (NoSpaceError) when `needed` bytes plus the reserve do not fit in the free space of `dir`. */
export async function checkRoom(dir: string, needed: number, what: string): Promise<void> {
  if (needed <= 0) return;
  const { free, total } = await freeSpace(dir);
  const reserve = spaceReserve(total);
  if (needed + reserve > free) throw new NoSpaceError(dir, free, needed + reserve, `${what} (estimate ${needed} bytes plus a reserve of ${reserve})`);
}
