/**
 * The image store's contract with the receiver (and the `vmlift image` CLI).
 *
 * A *source* (one VM or one agent machine; id matches [a-z0-9-]) has *images*; each image is a
 * full point-in-time image of each of the source's disks (numbered 0..n-1). A *cycle* builds the
 * next image by applying extents onto the previous image copy-on-write; nothing of a cycle is
 * visible as an image until `commit` returns. The image shapes themselves (DiskSpec, ImageInfo,
 * HeldRanges, ...) are shared vocabulary in src/model/images.ts.
 */
import type { DiskSpec, HeldRanges, ImageInfo } from '../model/images.ts';
import { CodedError } from '../util/errors.ts';

export interface BeginCycleOptions {
  sourceId: string;
  /** Sender-chosen id of the cycle ([a-z0-9-]); beginning an existing open cycle resumes it. */
  cycleId: string;
  disks: DiskSpec[];
  /** Build on this image (default: the source's newest). `null` forces a cycle from empty disks. */
  baseImageId?: string | null;
  /**
   * Per disk of the cycle (indexed by its number), the base image's disk it starts from, or null for an empty
   * disk (a disk the base does not have). Default: each disk starts from the base's disk of the same
   * number, when the base has one. Ignored without a base image.
   */
  baseDisks?: (number | null)[];
}

export interface CommitOptions {
  /** Attached to the image as `meta`. */
  meta?: Record<string, unknown>;
  /**
   * Ranges (per disk) the sender says it sent; commit refuses (StoreError 'MISSING_EXTENTS')
   * when any of them is not held.
   */
  expected?: HeldRanges[];
  /**
   * Checks the staged image (flushed, not yet published) after the `expected` check. Throwing
   * refuses the commit with that error: nothing is published and the cycle stays open (commit it
   * again, or abort it).
   */
  verify?: (staged: StagedImage) => Promise<void>;
}

/** A cycle's image as `commit` would publish it (read by `CommitOptions.verify`). */
export interface StagedImage {
  readonly disks: readonly DiskSpec[];
  /** Bytes of a disk as the image will hold them (holes read as zeros); at most MAX_READ (64 MiB) a call. */
  read(disk: number, offset: number, length: number): Promise<Buffer>;
}

/** Optional hints for `writeExtent` (added by the store; callers may ignore them). */
export interface WriteExtentOptions {
  /**
   * SHA-256 of `data` (32 bytes or 64 hex chars), used only when the extent is exactly one whole
   * chunk (offset a multiple of `chunkSize`, length = that chunk's length, data not null) or exactly
   * one whole sub-chunk (1/16 of a chunk, aligned): the store then names it without hashing again. The store trusts it; pass it only after
   * checking it against the bytes (the receiver does, for wire digests).
   */
  sha256?: Uint8Array | string;
  /**
   * `sha256` is the sender's claim, not checked yet: the store checks it against the bytes (their
   * tree digest, one pass that also names the chunk) before anything names or holds them, and fails
   * with BAD_DIGEST, storing nothing, when it differs. For an extent of one whole chunk the check and
   * the pack append are one native call (docs/store.md, "Checked appends"); any other extent is hashed
   * whole first.
   */
  check?: boolean;
}

export interface CycleWriter {
  /** The store's chunk size in bytes: extents aligned to it take the fast path. */
  readonly chunkSize: number;
  readonly sourceId: string;
  readonly cycleId: string;
  readonly disks: readonly DiskSpec[];
  readonly baseImageId: string | null;
  /** Per disk, the base image's disk it started from (null: empty); null without a base image (or for a cycle begun before this was recorded). */
  readonly baseDisks: readonly (number | null)[] | null;
  /**
   * Apply `length` bytes at `offset` of `disk`. `data` null means all zeros.
   * Throws StoreError 'OUT_OF_RANGE' past the disk's capacity, 'BAD_DISK' for an unknown disk.
   * Concurrent calls are allowed; overlapping calls are applied in call order.
   */
  writeExtent(disk: number, offset: number, length: number, data: Uint8Array | null, opts?: WriteExtentOptions): Promise<void>;
  /**
   * Whether [offset, offset + length) of `disk` (in range) is one whole chunk: a checked write of it
   * is checked as it is appended (WriteExtentOptions.check), any other is hashed whole first.
   */
  wholeChunk(disk: number, offset: number, length: number): boolean;
  /** Make everything written so far durable and reported by `held()`. */
  flush(): Promise<void>;
  /** What this cycle durably holds (after the last flush), also after a crash and reopen. */
  held(): Promise<HeldRanges[]>;
  /** Atomically publish the cycle as the source's next image (after `opts.verify` accepted it). */
  commit(opts?: CommitOptions): Promise<ImageInfo>;
  /** Drop the cycle; the previous image stays as it was. */
  abort(): Promise<void>;
}

export interface ImageStore {
  readonly root: string;
  /** Chunk size in bytes (fixed when the store is created; recorded in `<root>/store.json`). */
  readonly chunkSize: number;
  beginCycle(opts: BeginCycleOptions): Promise<CycleWriter>;
  /** Open cycles of a source (left by a crash or a broken connection). One already published (a crash before its folder went) is finished here, not listed. */
  openCycles(sourceId: string): Promise<string[]>;
  listSources(): Promise<string[]>;
  listImages(sourceId: string): Promise<ImageInfo[]>;
  getImage(sourceId: string, imageId: string): Promise<ImageInfo>;
  /** Read bytes of a committed image (holes read as zeros). */
  readImage(sourceId: string, imageId: string, disk: number, offset: number, length: number): Promise<Buffer>;
  /**
   * Raw index slots of an image's disk: 32 bytes (the chunk's SHA-256) per chunk from chunk `first`,
   * `count` chunks (clipped to the disk); all-zero slots are holes. Chunk i covers bytes
   * [i*chunkSize, min((i+1)*chunkSize, capacity)). Lets a sender compare block digests without
   * reading image data when its block size equals `chunkSize`.
   */
  chunkDigests(sourceId: string, imageId: string, disk: number, first: number, count: number): Promise<Buffer>;
  /** Re-hash every chunk of an image; lists bad chunks. Pins the image while it runs. */
  verify(sourceId: string, imageId: string): Promise<{ ok: boolean; chunks: number; bad: { disk: number; offset: number; reason: string }[] }>;
  /** Export one disk of an image. Pins the image while it runs. Never leaves a partial file at `output`. */
  export(sourceId: string, imageId: string, disk: number, format: 'raw' | 'qcow2' | 'vmdk', output: string): Promise<void>;
  /** Pin an image (retention and `image rm` skip it) until the returned function is called; `.sync()` releases it on a signal. */
  pin(sourceId: string, imageId: string): Promise<(() => Promise<void>) & { sync(): void }>;
  /** Delete an image (refused while pinned by an export or verify). */
  removeImage(sourceId: string, imageId: string): Promise<void>;
  /** Keep at most `maxImages` (1–10) images of the source, then (when it removed any) collect garbage. Returns the removed image ids. */
  applyRetention(sourceId: string, maxImages: number): Promise<string[]>;
  /**
   * Mark and sweep chunks no index or open cycle references: a pack (packs.ts) with less than
   * REPACK_BELOW of its bytes live is deleted, its live chunks copied to a new pack first; packs smaller
   * than MERGE_BELOW are merged into full-sized ones (`mergedPacks`, `mergedBytes`). Safe while cycles run. Chunks spared
   * by the sweep's grace (`deferredChunks`) are owed to a later sweep: the store runs one by itself
   * once the grace has passed, at the next `applyRetention`, and when it is next opened.
   */
  gc(): Promise<{ removedChunks: number; removedBytes: number; deferredChunks: number; removedPacks?: number; repackedChunks?: number; repackedBytes?: number; mergedPacks?: number; mergedBytes?: number }>;
  /** Chunk totals for `image ls` and the receiver's `GET /v1/store`: logical bytes referenced vs stored bytes (dedup ratio). */
  stats(): Promise<StoreStats>;
  close(): Promise<void>;
}

/**
 * Totals of a store. `logicalBytes`: the allocated bytes (non-hole chunks) of every disk of every
 * image, each image counted in full (two images of the same data count twice). `storedBytes`: chunk
 * data in packs, a chunk held by two packs counted twice (such copies wait for gc), garbage not yet
 * swept included; `distinctBytes`: the same counting each chunk once. `dedupRatio` =
 * logicalBytes / distinctBytes, copies counted once (1 for an empty store). Chunk data is stored as
 * written (no compression), so the ratio is deduplication alone.
 */
export interface StoreStats { logicalBytes: number; storedBytes: number; distinctBytes: number; chunks: number; images: number; sources: number; dedupRatio: number }

/** A refusal or failure of the image store (NOT_FOUND, PINNED, MISSING_EXTENTS, ...). */
export class StoreError extends CodedError {}
