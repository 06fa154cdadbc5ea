/** The argument checks every BlockSource read makes before it touches the transport. */
export function checkReadBounds(s: { uri: string; capacity: number; maxReadSize: number }, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > s.capacity) {
    throw new RangeError(`read of ${length} bytes at offset ${offset} is outside ${s.uri} (capacity ${s.capacity})`);
  }
  if (length > s.maxReadSize) throw new RangeError(`read of ${length} bytes exceeds maxReadSize ${s.maxReadSize} of ${s.uri}`);
}
