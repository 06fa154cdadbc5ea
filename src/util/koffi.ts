/**
 * koffi, loaded on demand, and the one queue every asynchronous koffi call of the process goes
 * through: koffi runs `fn.async` calls on worker threads of its own and refuses too many at once.
 */
import { createRequire } from 'node:module';

export interface KoffiFn {
  (...args: unknown[]): number;
  async: (...args: unknown[]) => void;
}
export interface KoffiLib { func: (decl: string) => KoffiFn }
export interface Koffi { load: (lib: string) => KoffiLib; errno: () => number }

let koffi: Koffi | null | undefined;

/** The koffi module, or null where it cannot load (another OS, a failed native build). */
export function loadKoffi(): Koffi | null {
  if (koffi === undefined) {
    try {
      koffi = createRequire(import.meta.url)('koffi') as Koffi;
    } catch {
      koffi = null;
    }
  }
  return koffi;
}

const MAX_ASYNC = 8;
let running = 0;
const waiting: (() => void)[] = [];

/** Run `fn` (which starts one koffi async call) when fewer than MAX_ASYNC are running. */
export async function limitedAsync<T>(fn: () => Promise<T>): Promise<T> {
  if (running >= MAX_ASYNC) await new Promise<void>((r) => waiting.push(r));
  running++;
  try {
    return await fn();
  } finally {
    running--;
    waiting.shift()?.();
  }
}

/** Call `f.async(...args)` through the queue; resolves with its return value. */
export function callAsync(f: KoffiFn, ...args: unknown[]): Promise<number> {
  return limitedAsync(() => new Promise<number>((resolve, reject) => {
    f.async(...args, (err: unknown, r: number) => { if (err) reject(err as Error); else resolve(r); });
  }));
}
