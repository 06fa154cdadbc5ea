/**
 * Two libc calls Node lacks, through koffi (best effort: without them the store falls back to
 * one fsync per chunk file and keeps the page cache as is).
 *  - syncfs(2): one call makes a whole batch of chunk files durable. One fsync per file costs a
 *    journal commit each, which makes small chunks CPU-bound (docs/store.md, "Chunk size").
 *  - posix_fadvise(DONTNEED) on a chunk file once it is durable, like nbdcopy does for its output:
 *    a full cycle then recycles page-cache pages instead of filling RAM with chunks nobody reads soon
 *    (writing into page-cache pages the guest never touched costs far more CPU than into recycled ones; docs/store.md).
 */
import { callAsync, loadKoffi, type KoffiFn } from '../util/koffi.ts';

interface Libc { syncfs: KoffiFn; fadvise: KoffiFn; errno: () => number }

let libc: Libc | null | undefined;

function load(): Libc | null {
  if (process.platform !== 'linux' || process.env.VMLIFT_STORE_NO_NATIVE) return null;
  const koffi = loadKoffi();
  if (!koffi) return null;
  try {
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

/** syncfs(2) on the filesystem holding `fd`, off the main thread. */
export async function syncfs(fd: number): Promise<void> {
  const l = get();
  if (!l) throw new Error('syncfs is not available');
  const r = await callAsync(l.syncfs, fd);
  if (r !== 0) throw new Error(`syncfs failed (errno ${l.errno()})`);
}

const POSIX_FADV_DONTNEED = 4;
/**
 * Drop a durable file's pages from the page cache (no-op without koffi). A direct call: on a file
 * that is already on disk it is cheaper than handing it to a thread (docs/transfer.md, Measurements).
 */
export async function dropFromCache(fd: number): Promise<void> {
  const l = get();
  if (!l) return;
  try { l.fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); } catch { /* only a page-cache hint */ }
}
