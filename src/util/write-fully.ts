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
