/**
 * One open cycle on the receiver, as a Sender drives it (sender.ts has the usage). Composed of:
 * the window of unacknowledged extents (send-window.ts), what is held and sent per disk
 * (coverage.ts), packing pieces (piece-packer.ts), the data connection (data-link.ts), the
 * reconnect rules (reconnect.ts), the commit and its retries (commit.ts) and the compression
 * governor (compression-governor.ts). What is left here: `send` cutting extents into pieces for the window, and
 * the pump writing the window to the connection.
 *
 * - `send` copies `data` before it resolves; the caller may reuse the buffer afterwards (not before).
 *   With `{ handOver: true }` the caller gives the buffer up instead (no copy when it is one whole piece).
 *   Extents entirely inside `held` (from a previous run) are skipped, so a restarted agent may simply
 *   send everything again. Extents are split into ≤ 1 MiB pieces, zero pieces become markers,
 *   the rest is hashed (SHA-256) and compressed (zstd, level map in levels.ts) in a 2-worker pool.
 * - Pipelining: frames go out without waiting; the receiver ACKs after its store flushed. Unacked
 *   extents stay in a bounded window (`windowBytes`, default 64 MiB of payload) and `send` waits when it is full.
 * - Resume: when the data connection breaks, goes silent (link-timeouts.ts) or the receiver restarts, the session re-begins the cycle
 *   and reconnects with backoff (for up to `resumeTimeoutMs`). If the receiver process survived, it
 *   reports the last durable sequence number and only frames after it are re-sent; after a receiver
 *   restart, unacked extents the store reports as held are skipped. Bytes sent twice per reconnect are
 *   therefore at most the window (64 MiB) — the receiver flushes (and acks) every 32 MiB or 300 ms,
 *   so the window also covers one flush interval.
 * - Errors: refusals by the receiver (bad credential, bad digest, out of range, ...) are UserErrors with
 *   the receiver's message; they fail the session for good. Network errors are retried.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import type { Logger } from '../util/log.ts';
import { UserError, errorMessage } from '../util/errors.ts';
import { RemoteError, type ControlClient, type ControlTarget } from './control-client.ts';
import { CODEC, FATAL_CODES, MAX_ZERO_EXTENT, PIECE_SIZE, encodeExtentHeader } from './protocol.ts';
import type { Packed } from './codec-pool.ts';
import { CompressionGovernor, DEFAULT_TIMING, type PackPhase } from './compression-governor.ts';
import type { BeginCycleRequest, CommitRequest, ReceiverCycle, SendOptions, SessionStats } from './contract.ts';
import { SendWindow, type WindowEntry } from './send-window.ts';
import { CycleCoverage } from './coverage.ts';
import { DataLink, type DataLinkEvents } from './data-link.ts';
import { Backoff, Outage, reconnectVerdict } from './reconnect.ts';
import { commitBody, commitWithRetries } from './commit.ts';
import { PiecePacker } from './piece-packer.ts';
import { linkTimeouts } from './link-timeouts.ts';
import { WIRE_VERSION } from './wire-version.ts';
import { split } from '../model/ranges.ts';
import type { DiskSpec, HeldRanges, ImageInfo } from '../model/images.ts';
import { crashPoint } from '../util/crash.ts';

/** What a cycle session uses of its Sender. */
export interface SessionHost {
  readonly sourceId: string;
  readonly credential: string;
  readonly control: ControlClient;
  /** The receiver, with the data port to use. */
  readonly data: ControlTarget & { dataPort: number };
  readonly log: Logger;
  /** Send source digests at commit and have the receiver verify the image. */
  readonly checksum: boolean;
  /** Bytes of unacknowledged payload kept for resend. */
  readonly windowBytes: number;
  /** The window's limit now, at most windowBytes (a bandwidth-limited session holds less: window-size.ts). */
  windowLimit?(): number;
  /** Give up reconnecting (or retrying a commit) after this long without progress. */
  readonly resumeTimeoutMs: number;
  /** zstd level for new pieces; null: compression off. */
  zstdLevel(): number | null;
  /** Resolves when `n` more wire bytes may go out (the bandwidth limit). */
  takeTokens(n: number): Promise<void>;
  listImages(): Promise<ImageInfo[]>;
}

export interface ProgressEvent { disk: number; bytesSent: number; wireBytes: number }

/** What a zero marker (no payload) holds against the window. */
const MARKER_COST = 64;
/** Bytes the pump may leave queued in the data socket before it waits for a drain. */
const SOCKET_BUFFER = 2 * 1024 * 1024;
/**
 * A frame with at least this much payload is written only into a drained socket. Frames queued
 * behind a write in progress go out as one writev, and Node's TLS socket copies a writev's buffers
 * into one before encrypting: a copy of every payload byte (docs/transfer.md, Measurements).
 * Written alone, header and payload are encrypted in place.
 */
const ALONE_PAYLOAD = 256 * 1024;

interface Entry extends WindowEntry {
  packed: Promise<Packed>;
  /** The governor's phase this piece was packed in (undefined: compression off). */
  phase?: PackPhase | undefined;
  done?: Packed;
  /** SendOptions.release of the caller's buffer (a buffer of one piece). */
  release?: (() => void) | undefined;
}

class Signal {
  private waiters: (() => void)[] = [];
  wait(timeoutMs?: number): Promise<void> {
    return new Promise((r) => {
      this.waiters.push(r);
      if (timeoutMs !== undefined) setTimeout(r, timeoutMs).unref();
    });
  }
  notify(): void { const w = this.waiters; this.waiters = []; for (const r of w) r(); }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export class CycleSession extends EventEmitter implements ReceiverCycle {
  readonly cycleId: string;
  baseImageId: string | null = null;
  baseDisks: readonly (number | null)[] | null = null;
  held: HeldRanges[] = [];
  readonly disks: DiskSpec[];
  private readonly maxImages: number | undefined;
  private readonly requestedBase: string | null | undefined;
  private readonly requestedBaseDisks: (number | null)[] | undefined;
  private readonly estimatedBytes: number | undefined;
  private readonly log: Logger;
  private readonly streamId = randomBytes(8).toString('hex');

  private readonly window: SendWindow<Entry>;
  private readonly coverage = new CycleCoverage();
  private readonly governor: CompressionGovernor;
  private readonly packer: PiecePacker;
  private link: DataLink | null = null;
  private readonly linkEvents: DataLinkEvents;
  /** The connection the last SYNC (flush) went to: one per connection. */
  private syncSentOn: DataLink | null = null;
  private syncToken = 0;
  private fatal: Error | null = null;
  private ended = false;
  private readonly changed = new Signal();
  private pumpDone: Promise<void> | null = null;
  private watchdog: NodeJS.Timeout | null = null;
  private readonly st: SessionStats = { payloadBytes: 0, wireBytes: 0, extents: 0, resentBytes: 0, skippedBytes: 0, zeroBytes: 0, reconnects: 0, uncompressedForSpeedBytes: 0 };
  private readonly perDisk = new Map<number, number>();
  /** ms the pump waited for the socket to drain since it last wrote an extent. */
  private waitedForNetwork = 0;

  constructor(private readonly host: SessionHost, o: BeginCycleRequest) {
    super();
    this.cycleId = o.cycleId;
    this.disks = o.disks.map((d) => ({ ...d }));
    this.maxImages = o.maxImages;
    this.requestedBase = o.baseImageId;
    this.requestedBaseDisks = o.baseDisks && [...o.baseDisks];
    this.estimatedBytes = o.estimatedBytes;
    this.log = host.log.child({ cycleId: o.cycleId });
    // an entry leaves the window once durable on the receiver: its bytes are no longer read
    this.window = new SendWindow<Entry>(host.windowBytes, (e) => {
      e.release?.();
      if (e.done) e.done.release?.();
      else e.packed.then((p) => p.release?.(), () => {});
    });
    this.governor = new CompressionGovernor(undefined, undefined, { ...DEFAULT_TIMING, settleBytes: Math.max(DEFAULT_TIMING.settleBytes, host.windowBytes + (32 << 20)) });
    this.packer = new PiecePacker(this.governor, () => host.zstdLevel());
    this.linkEvents = {
      ack: (seq) => { if (seq !== undefined) this.window.ack(seq); this.changed.notify(); },
      remoteError: (e) => { if (FATAL_CODES.has(e.code)) this.fail(e); },
      lost: (link, e) => {
        if (this.link !== link) return;
        this.link = null;
        if (!this.ended && !this.fatal) this.log.warn({ err: e?.message }, 'data connection lost; will resume');
        this.changed.notify();
      },
    };
  }

  /** @internal Sender.beginCycle */
  async start(): Promise<void> {
    await this.begin();
    await this.connectData();
    this.pumpDone = this.pump();
    // a receiver that stops acknowledging (frozen, a stalled or half-open connection) is treated as a lost connection
    const ackMs = linkTimeouts(this.host.data.timeouts).ackMs;
    this.watchdog = setInterval(() => {
      const link = this.link;
      if (link && this.window.awaitingAck && link.silentMs() > ackMs) {
        this.log.warn({ silentMs: link.silentMs(), timeout: 'ackMs', timeoutMs: ackMs }, 'receiver stopped acknowledging; reconnecting');
        link.destroy();
      }
    }, Math.min(5000, Math.max(50, ackMs / 10)));
    this.watchdog.unref();
    this.once('closed', () => { if (this.watchdog) clearInterval(this.watchdog); });
  }

  /** Begin the cycle on the control port (again, after a reconnect): learn what the receiver holds. */
  private async begin(): Promise<void> {
    const body: BeginCycleRequest = { cycleId: this.cycleId, disks: this.disks };
    if (this.requestedBase !== undefined) body.baseImageId = this.requestedBase;
    if (this.requestedBaseDisks !== undefined) body.baseDisks = this.requestedBaseDisks;
    if (this.maxImages !== undefined) body.maxImages = this.maxImages;
    if (this.estimatedBytes !== undefined) body.estimatedBytes = this.estimatedBytes;
    const r = await this.host.control.beginCycle(body);
    this.baseImageId = r.baseImageId;
    this.baseDisks = Array.isArray(r.baseDisks) ? r.baseDisks : null;
    this.held = r.held;
    this.coverage.setHeld(r.held);
  }

  /** Open a data connection, then write the window again from what the receiver lacks. */
  private async connectData(): Promise<void> {
    const link = await DataLink.open(this.host.data,
      { sourceId: this.host.sourceId, credential: this.host.credential, cycleId: this.cycleId, streamId: this.streamId, wireVersion: WIRE_VERSION }, this.linkEvents);
    this.link = link;
    this.window.resume(link.durableSeq, (e) => this.coverage.heldCovers(e.disk, e.offset, e.length));
    this.syncSentOn = null;
    this.changed.notify();
  }

  private fail(e: Error): void {
    if (this.fatal) return;
    this.fatal = e;
    this.log.error({ err: e.message }, 'cycle session failed');
    this.link?.destroy();
    // nothing is written any more: the pieces' buffers go back to their owners (read units, codec buffers)
    this.window.discard();
    this.changed.notify();
  }

  /** Writes window entries in order; reconnects when the connection is gone. */
  private async pump(): Promise<void> {
    const outage = new Outage(this.host.resumeTimeoutMs);
    const backoff = new Backoff();
    while (!this.fatal && !this.ended) {
      if (!this.link) {
        if (!(await this.reconnect(outage, backoff))) break;
        continue;
      }
      const e = this.window.next();
      if (!e) {
        await this.changed.wait();
        continue;
      }
      if (!(await this.write(e))) break;
    }
  }

  /** One reconnect attempt after a backoff delay; false once the session is over. */
  private async reconnect(outage: Outage, backoff: Backoff): Promise<boolean> {
    outage.lost();
    if (outage.exceeded) {
      this.fail(new UserError('RECEIVER_UNREACHABLE', `lost the receiver for more than ${Math.round(this.host.resumeTimeoutMs / 1000)} s during cycle ${this.cycleId}`,
        'check that the receiver runs and is reachable, then run the cycle again: it resumes where it stopped', { transient: true }));
      return false;
    }
    await sleep(backoff.next());
    if (this.ended || this.fatal) return false;
    try {
      this.st.reconnects++;
      await this.begin();
      await this.connectData();
      this.log.info({ reconnects: this.st.reconnects }, 'data connection resumed');
      outage.ended();
      backoff.reset();
    } catch (e) {
      const verdict = reconnectVerdict(e);
      if (verdict === 'fatal') this.fail(e as Error);
      else this.log.warn({ err: errorMessage(e) }, verdict === 'retry' ? 'reconnect failed; retrying' : 'reconnect refused for now; retrying');
    }
    return true;
  }

  /** Write the next window entry once packed (and the bandwidth allows); false when packing failed. */
  private async write(e: Entry): Promise<boolean> {
    let p: Packed;
    // Waiting for a pack counts against compression only while the codec workers have a queue (more
    // packs outstanding than workers): one pack in flight means the source is what is slow.
    const codecQueued = !e.done && this.packer.codecQueued;
    const packWaitStart = performance.now();
    try { p = e.done ?? await e.packed; } catch (err) { this.fail(err as Error); return false; }
    const waitedForPack = codecQueued ? performance.now() - packWaitStart : 0;
    if (!e.done) {
      e.done = p;
      this.window.reprice(e, p.payload ? p.payload.length : MARKER_COST);
      this.changed.notify();
    }
    const payloadLen = p.payload ? p.payload.length : 0;
    const head = encodeExtentHeader({ codec: p.codec, seq: e.seq, disk: e.disk, offset: e.offset, length: e.length, digest: p.digest }, payloadLen);
    const wire = head.length + payloadLen;
    const tokenWaitStart = performance.now();
    await this.host.takeTokens(wire);
    this.governor.observe(waitedForPack, this.waitedForNetwork + performance.now() - tokenWaitStart);
    this.waitedForNetwork = 0;
    let link = this.link;
    if (link && payloadLen >= ALONE_PAYLOAD && link.needsDrain) {
      const drainStart = performance.now();
      await link.drained();
      this.waitedForNetwork += performance.now() - drainStart;
      if (this.link !== link) link = null;
    }
    if (!link || !this.window.isNext(e)) return true; // connection changed or window resynced meanwhile
    link.write(head);
    const ok = p.payload ? link.write(p.payload) : true;
    if (!e.sent) this.governor.written(e.phase, e.length);
    const first = this.window.written(e);
    this.st.wireBytes += wire;
    if (!first) this.st.resentBytes += wire;
    else {
      this.st.extents++;
      this.st.payloadBytes += e.length;
      if (p.codec === CODEC.ZERO) this.st.zeroBytes += e.length;
      this.perDisk.set(e.disk, (this.perDisk.get(e.disk) ?? 0) + e.length);
    }
    this.emit('progress', { disk: e.disk, bytesSent: this.perDisk.get(e.disk) ?? 0, wireBytes: this.st.wireBytes } satisfies ProgressEvent);
    // Small extents (incremental cycles) would wait for a drain after each one: keep up to
    // SOCKET_BUFFER bytes queued in the socket instead, so the pump writes on without a round trip.
    if (!ok && link.writableLength > SOCKET_BUFFER) {
      const drainStart = performance.now();
      await link.drained();
      this.waitedForNetwork += performance.now() - drainStart;
    }
    return true;
  }

  private check(): void {
    if (this.fatal) throw this.fatal;
    if (this.ended) throw new Error(`cycle ${this.cycleId} is already committed or aborted`);
  }

  /**
   * Queue `length` bytes at `offset` of `disk` (`data` null = zeros). Resolves when accepted into the
   * window; rejects when the session failed. `handOver`: the caller gives `data` up (it may be
   * detached afterwards); a buffer that is the whole of its own ArrayBuffer and one piece then moves
   * to the pack worker without a copy. `digest`: the caller's digests of the pieces of `data`
   * (transfer/digest-tree.ts `pieceDigests`): they are not hashed again, and all-zero pieces go as markers.
   */
  async send(disk: number, offset: number, data: Buffer | null, length?: number, opts?: SendOptions): Promise<void> {
    this.check();
    const len = data ? data.length : length;
    if (data && length !== undefined && length !== data.length) throw new RangeError(`send: length ${length} differs from data length ${data.length}`);
    if (len === undefined || !Number.isSafeInteger(len) || len < 0) throw new RangeError('send: a length is required for a zero extent');
    const spec = this.disks.find((d) => d.disk === disk);
    if (!spec) throw new RangeError(`send: disk ${disk} is not part of cycle ${this.cycleId}`);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + len > spec.capacity) {
      throw new RangeError(`send: ${len} bytes at ${offset} are outside disk ${disk} (capacity ${spec.capacity})`);
    }
    if (len === 0) return;
    if (this.coverage.alreadyHeld(disk, offset, len)) {
      this.st.skippedBytes += len;
      opts?.release?.();
      return;
    }
    // pieces end on absolute multiples of PIECE_SIZE (the store's chunk size): whole chunks take its fast path
    const pieces = [...split([{ offset, length: len }], data ? PIECE_SIZE : MAX_ZERO_EXTENT)];
    // the caller's digests: one per piece (an older caller's single digest of a longer extent is not used)
    const digests = data && opts?.digest?.length === pieces.length * 32 ? opts.digest : undefined;
    for (const [k, { offset: off, length: n }] of pieces.entries()) {
      const digest = digests?.subarray(k * 32, (k + 1) * 32);
      const zero = digest !== undefined && digest.every((b) => b === 0);
      const cost = data && !zero ? n : MARKER_COST;
      while (data && !zero && this.packer.full) {
        await this.packer.room();
        this.check();
      }
      while (!this.window.fits(cost, this.host.windowLimit?.() ?? this.host.windowBytes)) {
        await this.changed.wait();
        this.check();
      }
      this.check();
      const overwrite = this.coverage.recordSent(disk, off, n);
      const { packed, phase, copied } = zero ? this.packer.pack(null, 0, n) : this.packer.pack(data, off - offset, n, digest ? { ...opts, digest } : { ...opts, digest: undefined });
      // one piece only: pieces of one buffer may leave the window apart (after a receiver restart)
      let release = opts?.handOver && pieces.length === 1 ? opts.release : undefined;
      // packed from a copy (for compression) or a zero marker: the caller's bytes are free at once
      if (release && (copied || zero)) { release(); release = undefined; }
      this.window.push({ disk, offset: off, length: n, overwrite, packed, cost, phase, release });
      this.changed.notify();
      crashPoint('transfer:send');
    }
  }

  stats(): SessionStats { return { ...this.st, uncompressedForSpeedBytes: this.governor.rawBytes }; }

  /** Resolves when every extent sent so far is durable on the receiver (acknowledged after its store flushed). */
  async flush(): Promise<void> {
    crashPoint('transfer:flush');
    while (!this.window.empty) {
      this.check();
      if (this.link && this.window.allWritten && this.syncSentOn !== this.link) {
        this.syncSentOn = this.link;
        this.link.sync(++this.syncToken);
      }
      await this.changed.wait(1000);
    }
    this.check();
  }

  async commit(o: CommitRequest = {}): Promise<ImageInfo> {
    this.check();
    await this.flush();
    this.ended = true;
    this.changed.notify();
    this.link?.end();
    await this.pumpDone;
    const body = commitBody(o, this.coverage.expected(this.disks), this.host.checksum, this.maxImages);
    crashPoint('transfer:commit');
    try {
      return await commitWithRetries({
        send: async () => {
          const img = await this.host.control.commitCycle(this.cycleId, body);
          this.log.info({ imageId: img.imageId, ...this.stats(), compressionChoices: this.governor.decisions }, 'cycle committed');
          return img;
        },
        // a commit whose answer was lost: the image exists
        findCommitted: async () => (await this.host.listImages()).find((i) => i.cycleId === this.cycleId),
        // a receiver restart: reopen the cycle from its store
        reopen: () => this.begin(),
        timeoutMs: this.host.resumeTimeoutMs,
      });
    } catch (e) {
      // The receiver published nothing and keeps the cycle open: drop it, so that running the cycle again sends it anew.
      if (e instanceof RemoteError && e.code === 'CHECKSUM_MISMATCH') {
        await this.host.control.abortCycle(this.cycleId, { disks: this.disks })
          .catch((err: unknown) => this.log.warn({ err: errorMessage(err) }, 'could not abort the mismatching cycle; the next run of it aborts it again'));
      }
      throw e;
    } finally {
      this.emit('closed');
    }
  }

  async abort(): Promise<void> {
    this.ended = true;
    this.changed.notify();
    this.link?.destroy();
    await this.pumpDone;
    try {
      await this.host.control.abortCycle(this.cycleId, { disks: this.disks });
    } finally {
      this.emit('closed');
    }
  }

  /** @internal Sender.close(): drop the connection, leave the cycle open on the receiver for a later resume. */
  detach(): void {
    this.ended = true;
    this.link?.destroy();
    this.changed.notify();
    this.emit('closed');
  }

  /** @internal Tests: break the data connection as a network failure would. */
  dropConnection(): void {
    this.link?.destroy();
  }
}
