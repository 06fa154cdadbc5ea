/**
 * The contract every disk reader implements (docs/design.md, "BlockSource").
 * Implementations: local (file / block device), nbd, vddk, http-datastore.
 */

export interface SourceExtent {
  offset: number;
  length: number;
  /** false: a hole / unallocated or known-zero area; true: data (may still contain zeros). */
  data: boolean;
}

export interface BlockSource {
  /** The URI or path the source was opened from (credentials removed). */
  readonly uri: string;
  /** 'local' | 'nbd' | 'vddk' | 'http-datastore' */
  readonly transport: string;
  /** Capacity in bytes. */
  readonly capacity: number;
  /** Largest length one read() may ask for. */
  readonly maxReadSize: number;
  /** Reads the caller may keep in flight at once. */
  readonly maxInFlight: number;
  /** Exactly `length` bytes at `offset` (offset + length <= capacity), or a thrown error naming the offset and cause. */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * Optional: like read(), but into the caller's buffer (`target.length` bytes at `offset`), so a reader
   * that recycles its buffers avoids one allocation per read (for the NBD client, a large share of its
   * CPU; docs/transports.md).
   * The target's content is undefined when the promise rejects.
   */
  readInto?(offset: number, target: Buffer): Promise<void>;
  /** Allocated / hole map of [offset, offset+length) (default: the whole disk), in order, when the transport knows it. */
  extents?(offset?: number, length?: number): AsyncIterable<SourceExtent>;
  /**
   * Optional: the allocated byte ranges of the whole disk as the source's own library knows them
   * (VDDK's QueryAllocatedBlocks), for a first full copy; undefined when it cannot tell, and the
   * caller asks vSphere (QueryChangedDiskAreas "*") instead.
   */
  allocatedRanges?(): Promise<Array<{ offset: number; length: number }> | undefined>;
  close(): Promise<void>;
}
