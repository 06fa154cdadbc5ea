import { createRequire } from 'node:module';

/**
 * Drop a written, fsynced chunk file from the page cache (posix_fadvise DONTNEED), like nbdcopy does
 * for its output: a full cycle then recycles the same page-cache pages instead of filling RAM with
 * chunk data nobody reads soon. On fresh VMs that matters a lot: first-touch of guest memory made
 * page-cache writes ~4 s CPU/GiB against ~0.5 s with recycled pages (measured, docs/store.md).
 * Best effort: without koffi or libc it does nothing.
 */
type Fadvise = (fd: number, offset: number, len: number, advice: number) => number;
const POSIX_FADV_DONTNEED = 4;

let fadvise: Fadvise | null | undefined;

function load(): Fadvise | null {
  if (process.platform !== 'linux' || process.env.VMLIFT_STORE_NO_FADVISE) return null;
  try {
    const require = createRequire(import.meta.url);
    const koffi = require('koffi') as { load: (lib: string) => { func: (decl: string) => Fadvise } };
    return koffi.load('libc.so.6').func('int posix_fadvise(int fd, int64_t offset, int64_t len, int advice)');
  } catch {
    return null;
  }
}

export function dropFromCache(fd: number): void {
  if (fadvise === undefined) fadvise = load();
  if (fadvise) fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
}
