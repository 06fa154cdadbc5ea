/**
 * The few libc calls Node does not expose: lseek with SEEK_DATA / SEEK_HOLE (hole map of a sparse
 * file) and SEEK_END (size of a block device). Loaded lazily through koffi.
 */
import koffi from 'koffi';
import { CodedError } from '../../util/errors.ts';

export const SEEK_END = 2;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const ENXIO = 6;
export const EINVAL = 22;

type LseekFn = (fd: number, offset: number | bigint, whence: number) => number | bigint;
let lseekFn: LseekFn | undefined;

function lseekNative(): LseekFn {
  if (!lseekFn) {
    const libc = koffi.load('libc.so.6');
    lseekFn = libc.func('int64_t lseek(int fd, int64_t offset, int whence)') as LseekFn;
  }
  return lseekFn;
}

export class LseekError extends CodedError {
  readonly errno: number;
  constructor(errno: number, message: string) {
    super('LSEEK_FAILED', message, { fix: 'check the device or file system the disk image is on (see errno in the message)' });
    this.errno = errno;
  }
}

/** lseek(2); returns the new offset, or throws LseekError with errno (ENXIO past the last data/hole). */
export function lseek(fd: number, offset: number, whence: number): number {
  const r = Number(lseekNative()(fd, offset, whence));
  if (r < 0) {
    const errno = koffi.errno();
    throw new LseekError(errno, `lseek(fd ${fd}, ${offset}, ${whence}) failed with errno ${errno}`);
  }
  return r;
}
