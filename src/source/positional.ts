/**
 * What the positional readers (NBD, VDDK, HTTP datastore) share: the argument checks every read
 * makes before it touches the transport, and read()/readInto() on top of one readAt().
 */
export function checkReadBounds(s: { uri: string; capacity: number; maxReadSize: number }, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > s.capacity) {
    throw new RangeError(`read of ${length} bytes at offset ${offset} is outside ${s.uri} (capacity ${s.capacity})`);
  }
  if (length > s.maxReadSize) throw new RangeError(`read of ${length} bytes exceeds maxReadSize ${s.maxReadSize} of ${s.uri}`);
}

export abstract class PositionalReader {
  abstract readonly uri: string;
  abstract readonly capacity: number;
  abstract readonly maxReadSize: number;

  async read(offset: number, length: number): Promise<Buffer> {
    checkReadBounds(this, offset, length);
    return this.readAt(offset, length, undefined);
  }

  async readInto(offset: number, target: Buffer): Promise<void> {
    checkReadBounds(this, offset, target.length);
    await this.readAt(offset, target.length, target);
  }

  /** Exactly `length` bytes at `offset` (bounds already checked), into `target` when given. */
  protected abstract readAt(offset: number, length: number, target: Buffer | undefined): Promise<Buffer>;

  /**
   * For a transport that reads whole blocks of `align` bytes: fetches the blocks around
   * [offset, offset + length) (the last one cut at the capacity) and hands out the part asked for.
   */
  protected async readAligned(offset: number, length: number, target: Buffer | undefined, align: number,
    fetch: (start: number, length: number, into: Buffer | undefined) => Promise<Buffer>): Promise<Buffer> {
    const start = Math.floor(offset / align) * align;
    const end = Math.min(this.capacity, Math.ceil((offset + length) / align) * align);
    if (start === offset && end === offset + length) return fetch(start, length, target);
    const part = (await fetch(start, end - start, undefined)).subarray(offset - start, offset - start + length);
    if (target) part.copy(target);
    return part;
  }
}
