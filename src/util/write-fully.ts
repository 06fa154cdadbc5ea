/**
 * Write all of `data` at `position` (null: at the file's end, for files opened to append).
 * FileHandle.write may write fewer bytes than asked without an error (a filesystem that fills up
 * mid-write); looping makes the next write fail with ENOSPC instead of leaving a short file.
 */
import type { FileHandle } from 'node:fs/promises';

export async function writeFully(fh: FileHandle, data: Uint8Array | string, position: number | null, length?: number): Promise<void> {
  const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const end = length ?? buf.length;
  for (let done = 0; done < end;) {
    const { bytesWritten } = await fh.write(buf, done, end - done, position === null ? null : position + done);
    done += bytesWritten;
  }
}

/**
 * Write all of `bufs`, one after the other, at `position`: one `pwritev` (looping on a short write,
 * as `writeFully`), so a pack entry's header and data, or a run of entries, cost one system call.
 */
export async function writevFully(fh: FileHandle, bufs: readonly Uint8Array[], position: number): Promise<void> {
  let rest = [...bufs];
  let at = position;
  while (rest.length > 0) {
    const { bytesWritten } = await fh.writev(rest, at);
    at += bytesWritten;
    let n = bytesWritten;
    while (rest.length > 0 && n >= rest[0]!.length) { n -= rest[0]!.length; rest.shift(); }
    if (n > 0) rest[0] = rest[0]!.subarray(n);
  }
}
