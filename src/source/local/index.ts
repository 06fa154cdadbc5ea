/**
 * BlockSource over a local file or block device (what `vmlift agent` reads).
 * Files: capacity = size, hole map through SEEK_DATA / SEEK_HOLE.
 * Block devices: capacity through lseek(SEEK_END); no hole map (the whole device is reported as
 * data and the reader skips all-zero blocks itself).
 * `open` returns it under the retry wrapper, so a failed read raises SourceReadError like every reader's.
 */
import { open, type FileHandle } from 'node:fs/promises';
import type { BlockSource, SourceExtent } from '../types.ts';
import { UserError } from '../../util/errors.ts';
import { retryingSource, type RetryPolicy } from '../retry.ts';
import { lseek, LseekError, SEEK_DATA, SEEK_END, SEEK_HOLE, ENXIO } from './libc.ts';

export interface LocalSourceOptions {
  /** Largest single read (default 4 MiB). */
  maxReadSize?: number;
  /** Reads the caller may keep in flight (default 8). */
  maxInFlight?: number;
  retry?: RetryPolicy;
}

export class LocalSource implements BlockSource {
  readonly transport = 'local';
  readonly uri: string;
  readonly capacity: number;
  readonly maxReadSize: number;
  readonly maxInFlight: number;
  readonly isBlockDevice: boolean;
  private readonly fh: FileHandle;
  private closed = false;

  private constructor(path: string, fh: FileHandle, capacity: number, isBlockDevice: boolean, opts: LocalSourceOptions) {
    this.uri = path;
    this.fh = fh;
    this.capacity = capacity;
    this.isBlockDevice = isBlockDevice;
    this.maxReadSize = opts.maxReadSize ?? 4 * 1024 * 1024;
    this.maxInFlight = opts.maxInFlight ?? 8;
  }

  static async open(path: string, opts: LocalSourceOptions = {}): Promise<LocalSource> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        throw new UserError('DEVICE_MISSING', `device ${path} does not exist`, 'check the --device path (a block device such as /dev/sda or a disk image file)', { cause: e });
      }
      if (code === 'EACCES' || code === 'EPERM') {
        throw new UserError('DEVICE_ACCESS', `cannot open device ${path}: permission denied`, 'run the agent as root or give its user read access to the device', { cause: e });
      }
      throw new UserError('DEVICE_OPEN', `cannot open device ${path}: ${(e as Error).message}`, 'check the --device path', { cause: e });
    }
    try {
      const st = await fh.stat();
      let capacity: number;
      let isBlock = false;
      if (st.isBlockDevice()) {
        isBlock = true;
        capacity = lseek(fh.fd, 0, SEEK_END);
        lseek(fh.fd, 0, 0);
      } else if (st.isFile()) {
        capacity = st.size;
      } else {
        throw new UserError('DEVICE_TYPE', `${path} is neither a block device nor a regular file`, 'pass a block device (/dev/sdX, /dev/vdX, /dev/mapper/...) or a disk image file');
      }
      if (capacity === 0) {
        throw new UserError('DEVICE_EMPTY', `device ${path} is empty (0 bytes)`, 'pass a device or image file with data');
      }
      if (capacity % 512 !== 0) {
        throw new UserError('DEVICE_SIZE', `device ${path} has ${capacity} bytes, not a multiple of 512`, 'disk images must be a whole number of 512-byte sectors; pad the file (truncate -s) to a multiple of 512');
      }
      return retryingSource(new LocalSource(path, fh, capacity, isBlock, opts), opts.retry);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(Math.max(0, length));
    await this.readInto(offset, buf);
    return buf;
  }

  /** Into the caller's buffer: the agent reuses its window buffers (no 1 MiB allocation, and no major GC, per window). */
  async readInto(offset: number, buf: Buffer): Promise<void> {
    const length = buf.length;
    if (offset < 0 || offset + length > this.capacity) {
      throw new RangeError(`read of ${length} bytes at ${offset} is outside ${this.uri} (capacity ${this.capacity})`);
    }
    let done = 0;
    while (done < length) {
      let n: number;
      ({ bytesRead: n } = await this.fh.read(buf, done, length - done, offset + done));
      if (n === 0) throw new Error(`${this.uri} ended at offset ${offset + done}, before its capacity ${this.capacity} (was it truncated?)`);
      done += n;
    }
  }

  async *extents(offset = 0, length = this.capacity - offset): AsyncIterable<SourceExtent> {
    const end = Math.min(this.capacity, offset + length);
    if (this.isBlockDevice) {
      if (end > offset) yield { offset, length: end - offset, data: true };
      return;
    }
    let pos = offset;
    while (pos < end) {
      let dataAt: number;
      try {
        dataAt = lseek(this.fh.fd, pos, SEEK_DATA);
      } catch (e) {
        if (e instanceof LseekError && e.errno === ENXIO) { // no data after pos
          yield { offset: pos, length: end - pos, data: false };
          return;
        }
        // Filesystem without SEEK_DATA support: report everything as data.
        yield { offset: pos, length: end - pos, data: true };
        return;
      }
      if (dataAt >= end) {
        yield { offset: pos, length: end - pos, data: false };
        return;
      }
      if (dataAt > pos) yield { offset: pos, length: dataAt - pos, data: false };
      let holeAt: number;
      try {
        holeAt = lseek(this.fh.fd, dataAt, SEEK_HOLE);
      } catch {
        holeAt = end;
      }
      holeAt = Math.min(holeAt, end);
      yield { offset: dataAt, length: holeAt - dataAt, data: true };
      pos = holeAt;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }
}

export function openLocalSource(path: string, opts?: LocalSourceOptions): Promise<LocalSource> {
  return LocalSource.open(path, opts);
}
