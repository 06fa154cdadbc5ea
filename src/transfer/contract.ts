/**
 * The contract between a sender (the agentless engine, the agent) and the receiver, written once:
 *
 * - what a sender does with a receiver (`ReceiverSession`) and with one open cycle on it
 *   (`ReceiverCycle`); transfer/sender.ts implements both, the engine and the agent use them;
 * - the control API's request and response bodies, route by route: sent by control-client.ts,
 *   checked by receiver/requests.ts and answered by receiver/control.ts;
 * - the JSON bodies of the data port's frames (see protocol.ts for the framing).
 */
import type { WireError } from './protocol.ts';
import type { DiskSpec, HeldRanges, ImageInfo, SourceDigest } from '../model/images.ts';

// ---- what the senders use ----

export interface SessionStats {
  /** Uncompressed bytes covered by extents sent (zero markers included), first transmissions only. */
  payloadBytes: number;
  /** Bytes written to the data socket (frames, including re-sends). */
  wireBytes: number;
  extents: number;
  /** Wire bytes sent a second time after a reconnect. */
  resentBytes: number;
  /** Bytes `send` skipped because the receiver already held them. */
  skippedBytes: number;
  /** Bytes sent as zero markers. */
  zeroBytes: number;
  reconnects: number;
  /** Bytes sent uncompressed although compression was on, because the link was faster than the codec (compression-governor.ts). */
  uncompressedForSpeedBytes: number;
}

export interface SendOptions {
  /** The caller will not touch `data` again (the sender may move it to a worker without a copy). */
  handOver?: boolean;
  /**
   * The caller's digests of the pieces of `data` (cut at absolute multiples of PIECE_SIZE, 1 MiB):
   * 32 bytes each, concatenated — the tree digest of a piece (util/tree-digest.ts), or 32 zero bytes for an all-zero piece
   * (`pieceDigests` in digest-tree.ts). The pieces are not hashed again. Ignored unless there is one per piece.
   */
  digest?: Buffer;
  /**
   * With `handOver` and `data` of one piece: called once the sender holds `data` no longer (the
   * receiver acknowledged it as durable, or it was skipped), so the caller may fill the buffer
   * again. Not called when the session ends first; a buffer the sender moved to a worker is
   * detached by then (length 0): check before reuse.
   */
  release?: () => void;
}

/** What a sender commits a cycle with. */
export interface CommitRequest {
  /** Attached to the image as `meta`. */
  meta?: Record<string, unknown>;
  /** Digests of what was read (a whole-disk SHA-256 or a digest tree per disk, digest-tree.ts); the receiver verifies the staged image against them before publishing it, when the sender checks sums. */
  sourceDigests?: SourceDigest[];
}

/** One open cycle on the receiver. */
export interface ReceiverCycle {
  readonly cycleId: string;
  readonly baseImageId: string | null;
  /** Per disk, the base image's disk it starts from, as the receiver answered (null: it did not say: no base, or a receiver that predates per-disk bases). */
  readonly baseDisks: readonly (number | null)[] | null;
  /** What the receiver already holds of this cycle (from an earlier run): need not be read again. */
  readonly held: HeldRanges[];
  /**
   * Queue `length` bytes at `offset` of `disk` (`data` null = zeros; `length` then required).
   * Resolves once accepted (backpressure); `data` may be reused afterwards unless handed over.
   */
  send(disk: number, offset: number, data: Buffer | null, length?: number, opts?: SendOptions): Promise<void>;
  /** Resolves once everything sent so far is durable on the receiver. */
  flush(): Promise<void>;
  stats(): SessionStats;
  commit(o?: CommitRequest): Promise<ImageInfo>;
  abort(): Promise<void>;
}

/** An authenticated session of one source with the receiver. */
export interface ReceiverSession {
  readonly sourceId: string;
  listImages(): Promise<ImageInfo[]>;
  /** Delete one of this source's images (refused while an export or verify uses it). */
  deleteImage(imageId: string): Promise<void>;
  /** First 16 bytes of SHA-256 of every `blockSize` block of a committed image's disk, in order. */
  blockDigests(imageId: string, disk: number, blockSize: number): AsyncIterable<Uint8Array>;
  /** Begin a cycle, or resume the open cycle of that id. */
  beginCycle(o: BeginCycleRequest): Promise<ReceiverCycle>;
  setBandwidthMbps(n: number): void;
  setCompression(level: number): void;
  close(): Promise<void>;
}

// ---- control API (port 8080, HTTP+JSON; see receiver/control.ts for the routes) ----

/** POST /v1/register (the only route without a credential). */
export interface RegisterRequest { sourceId: string; code: string; label?: string | null }
export interface RegisterResponse { sourceId: string; credential: string }

/** GET /v1/whoami */
/** `wireVersion`: the receiver's (transfer/wire-version.ts); absent from receivers of wire version 1. */
export interface WhoamiResponse { sourceId: string; dataPort: number; wireVersion?: number }

/** GET /v1/images */
export interface ImagesResponse { images: ImageInfo[] }

/** GET /v1/disks: the disks of the source's newest image. */
export interface DisksResponse { imageId: string | null; disks: DiskSpec[] }

/** DELETE /v1/images/:id */
export interface DeleteImageResponse { deleted: string }

/**
 * GET /v1/store: the receiver's space and its store's totals (store-wide, every source's images;
 * receiver/store-figures.ts). `freeBytes`/`totalBytes`: statfs of the data folder (free = available
 * to the receiver), read at the request. The rest (store/types.ts `StoreStats`) as computed at
 * `computedAt` (at most 60 s before, and after the last commit or gc), taking `computeMs`.
 */
export interface StoreFiguresResponse {
  freeBytes: number; totalBytes: number;
  storedBytes: number; distinctBytes: number; logicalBytes: number; dedupRatio: number;
  chunks: number; images: number; sources: number;
  computedAt: string; computeMs: number;
}

/** GET /v1/images/:id/digests?disk=&blockSize= answers an octet stream: 16 bytes per block. */
export interface DigestsQuery { disk: number; blockSize: number }

/** POST /v1/cycles: begin a cycle, or resume the open one of that id. */
export interface BeginCycleRequest {
  cycleId: string;
  disks: DiskSpec[];
  /** Build on this image (default: the newest); null builds from empty disks. */
  baseImageId?: string | null;
  /** Per disk, the base image's disk it starts from, or null for an empty disk (default: the base's disk of the same number). */
  baseDisks?: (number | null)[];
  /** Images to keep after the commit (1..10). */
  maxImages?: number;
  /**
   * Bytes the sender expects to send (changed or allocated areas, known before reading): the receiver
   * refuses to begin (NO_SPACE) when they do not fit in its free space minus a reserve. Absent: no check.
   */
  estimatedBytes?: number;
}
export interface BeginCycleResponse {
  cycleId: string;
  baseImageId: string | null;
  /** Per disk, the base image's disk it starts from (null: empty); absent without a base (and from receivers that predate it). */
  baseDisks?: (number | null)[];
  held: HeldRanges[];
}

/** GET /v1/cycles/:id/held */
export interface HeldResponse { held: HeldRanges[] }

/** POST /v1/cycles/:id/commit, answered with the new image's ImageInfo. */
export interface CommitCycleRequest {
  meta?: Record<string, unknown>;
  /** Ranges the sender sent (or found held): the commit is refused when any is missing. */
  expected?: HeldRanges[];
  /** Verify the staged image against `sourceDigests` before it is published (CHECKSUM_MISMATCH, 422: nothing published, the cycle stays open). */
  verify?: boolean;
  sourceDigests?: SourceDigest[];
  maxImages?: number;
}

/** POST /v1/cycles/:id/abort; `disks` lets a restarted receiver reopen the cycle to drop it. */
export interface AbortCycleRequest { disks?: DiskSpec[] }
export type AbortCycleResponse = Record<string, never>;

// ---- drills (issue 13: inspect, convert and boot-test an image on the receiver while the job keeps syncing) ----

export const DRILL_STATES = ['queued', 'running', 'passed', 'abnormal'] as const;
export type DrillState = (typeof DRILL_STATES)[number];
export type DrillStepName = 'inspect' | 'convert' | 'boot';

export interface DrillStepReport {
  step: DrillStepName;
  ok: boolean;
  seconds: number;
  /** One line for `job show`: the verdict of inspect, what convert wrote, what the boot reached. */
  message: string;
  code?: string;
  fix?: string;
}

/** GET /v1/drills/:id — also what POST /v1/drills answers (state `queued`). */
export interface DrillReport {
  drillId: string;
  sourceId: string;
  imageId: string;
  state: DrillState;
  requestedAt: string;
  startedAt: string | null;
  endedAt: string | null;
  steps: DrillStepReport[];
  /** The step under way while the drill runs, and since when (absent from receivers before it, and once the step ended). */
  current?: { step: DrillStepName; startedAt: string } | null;
  /** Set when the drill ended: "drill passed" or "drill abnormal" (the migration services' words). */
  verdict: 'drill passed' | 'drill abnormal' | null;
  /** The step that failed, its code, message and fix. */
  failure: { step: DrillStepName | 'drill'; code: string; message: string; fix?: string } | null;
  accel: string | null;
  secondsToLogin: number | null;
  consoleTail: string[];
  /** A PNG of the VGA console is at GET /v1/drills/:id/screenshot. */
  screenshot: boolean;
}

/** POST /v1/drills: drill an image of the caller's source (default: its newest). */
export interface StartDrillRequest { imageId?: string }
/** GET /v1/drills: the caller's drills, oldest first. */
export interface DrillsResponse { drills: DrillReport[] }

/** The body of every refused control request (4xx/5xx). */
export interface ErrorResponse { error: WireError }

// ---- data port frames (JSON bodies; ERROR frames carry a WireError) ----

/** `wireVersion`: the sender's (transfer/wire-version.ts); absent from senders of wire version 1. */
export interface HelloFrame { sourceId: string; credential: string; cycleId: string; streamId: string; wireVersion?: number }
/** `durableSeq`: the last sequence number of this stream that is durable, null for a stream the receiver does not know. */
export interface ReadyFrame { durableSeq: number | null }
export interface SyncFrame { token: number }
/** Everything up to `seq` is durable; `token` answers a SYNC. */
export interface AckFrame { seq: number; token?: unknown }
