/**
 * A full connector state folder: SQLite's SQLITE_FULL (or the OS's ENOSPC/EDQUOT) from any state
 * call becomes STATE_NO_SPACE, naming the folder, its free bytes and the fix. SQLite rolled the
 * failed statement or transaction back, so nothing of it is recorded; what was committed stays
 * readable.
 */
import { statfsSync } from 'node:fs';
import { StateError, type StateStore } from './types.ts';

const FULL_CODES = new Set(['SQLITE_FULL', 'ENOSPC', 'EDQUOT']);

export class StateNoSpaceError extends StateError {
  constructor(readonly dir: string, readonly freeBytes: number, cause: unknown) {
    super('STATE_NO_SPACE', `the connector's state folder ${dir} is full (${freeBytes} bytes free): the state database could not record the change, so nothing of it was recorded`, {
      fix: `free space in ${dir} (the connector home) or move the home to a bigger filesystem, then \`vmlift job resume JOB\`: the cycle resumes, and one the receiver already committed is recorded from its image`,
      cause,
    });
  }
}

export function isStateFull(e: unknown): boolean {
  for (let cur: unknown = e, depth = 0; cur && depth < 8; depth++, cur = (cur as { cause?: unknown }).cause) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === 'string' && FULL_CODES.has(code)) return true;
  }
  return false;
}

function freeBytes(dir: string): number {
  try { const s = statfsSync(dir); return s.bavail * s.bsize; } catch { return 0; }
}

/** `store` with every call's "disk full" error turned into StateNoSpaceError for `dir`. */
export function withNoSpaceErrors<T extends StateStore>(store: T, dir: string): T {
  return new Proxy(store, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        try {
          return (v as (...a: unknown[]) => unknown).apply(target, args);
        } catch (e) {
          if (e instanceof StateNoSpaceError || !isStateFull(e)) throw e;
          throw new StateNoSpaceError(dir, freeBytes(dir), e);
        }
      };
    },
  });
}
