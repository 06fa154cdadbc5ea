/**
 * Two libc calls Node lacks, through koffi (best effort: without them the store falls back to
 * one fsync per chunk file and keeps the page cache as is).
 *  - syncfs(2): one call makes a whole batch of chunk files durable. One fsync per file costs a
 *    journal commit each; measured on a 2-vCPU VM, per-file fsync made small chunks CPU-bound (docs/store.md).
 *  - posix_fadvise(DONTNEED) on a chunk file once it is durable, like nbdcopy does for its output:
 *    a full cycle then recycles page-cache pages instead of filling RAM with chunks nobody reads soon
 *    (on a fresh VM, first touch of guest memory made page-cache writes ~4 s CPU/GiB vs ~0.5 s).
 */
import { createRequire } from 'node:module';

interface KoffiFn {
  (...args: unknown[]): number;
  async: (...args: unknown[]) => void;
}
interface Libc { syncfs: KoffiFn; fadvise: KoffiFn; errno: () => number }

let libc: Libc | null | undefined;

function load(): Libc | null {
  if (process.platform !== 'linux' || process.env.VMLIFT_STORE_NO_NATIVE) return null;
  try {
    const require = createRequire(import.meta.url);
    const koffi = require('koffi') as { load: (lib: string) => { func: (decl: string) => KoffiFn }; errno: () => number };
    const lib = koffi.load('libc.so.6');
    return {
      syncfs: lib.func('int syncfs(int fd)'),
      fadvise: lib.func('int posix_fadvise(int fd, int64_t offset, int64_t len, int advice)'),
      errno: () => koffi.errno(),
    };
  } catch {
    return null;
  }
}

function get(): Libc | null {
  if (libc === undefined) libc = load();
  return libc;
}

export function hasSyncfs(): boolean {
  return get() !== null;
}

// koffi runs async calls on a small pool of its own and refuses too many at once: queue ours.
const MAX_ASYNC = 8;
let running = 0;
const waiting: (() => void)[] = [];
async function limited<T>(fn: () => Promise<T>): Promise<T> {
  if (running >= MAX_ASYNC) await new Promise<void>((r) => waiting.push(r));
  running++;
  try {
    return await fn();
  } finally {
    running--;
    waiting.shift()?.();
  }
}

/** syncfs(2) on the filesystem holding `fd`, off the main thread. */
export function syncfs(fd: number): Promise<void> {
  const l = get();
  if (!l) return Promise.reject(new Error('syncfs is not available'));
  return limited(() => new Promise((resolve, reject) => {
    l.syncfs.async(fd, (err: unknown, r: number) => {
      if (err) reject(err as Error);
      else if (r !== 0) reject(new Error(`syncfs failed (errno ${l.errno()})`));
      else resolve();
    });
  }));
}

const POSIX_FADV_DONTNEED = 4;
/** Drop a durable file's pages from the page cache, off the main thread (no-op without koffi). */
export function dropFromCache(fd: number): Promise<void> {
  const l = get();
  if (!l) return Promise.resolve();
  return limited(() => new Promise<void>((resolve) => {
    try {
      l.fadvise.async(fd, 0, 0, POSIX_FADV_DONTNEED, () => resolve());
    } catch {
      resolve(); // only a page-cache hint
    }
  }));
}
