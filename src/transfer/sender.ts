/**
 * The sending side of the vmlift wire protocol (used by the agent and the agentless engine).
 *
 * ```ts
 * const sender = await Sender.connect({ receiver: 'host[:8080]', fingerprint, credentialFile,
 *   activationCode /* only needed the first time *\/, sourceId, compression: 7, bandwidthMbps: 0, checksum: true });
 * const images = await sender.listImages();
 * for await (const d of sender.blockDigests(imageId, disk, 65536)) { ... }   // 16-byte digests in block order
 * const cycle = await sender.beginCycle({ cycleId, disks, maxImages: 3 });   // resumes an open cycle of that id
 * cycle.held                       // what the receiver already holds of this cycle: do not read it again
 * await cycle.send(disk, offset, buffer);          // resolves once accepted into the window (backpressure)
 * await cycle.send(disk, offset, null, length);    // zeros, sent as a marker
 * await cycle.flush();             // optional: wait until everything sent so far is durable on the receiver
 * const image = await cycle.commit({ meta, sourceDigests });
 * await sender.close();
 * ```
 *
 * - `send` copies `data` before it resolves; the caller may reuse the buffer afterwards (not before).
 *   With `{ handOver: true }` the caller gives the buffer up instead (no copy when it is one whole piece).
 *   Extents entirely inside `held` (from a previous run) are skipped, so a restarted agent may simply
 *   send everything again. Extents are split into ≤ 1 MiB pieces, zero pieces become markers,
 *   the rest is hashed (SHA-256) and compressed (zstd, level map in levels.ts) in a 2-worker pool.
 * - Pipelining: frames go out without waiting; the receiver ACKs after its store flushed. Unacked
 *   extents stay in a bounded window (`windowBytes`, default 64 MiB of payload) and `send` waits when it is full.
 * - Resume: when the data connection breaks or the receiver restarts, the session re-begins the cycle
 *   and reconnects with backoff (for up to `resumeTimeoutMs`). If the receiver process survived, it
 *   reports the last durable sequence number and only frames after it are re-sent; after a receiver
 *   restart, unacked extents the store reports as held are skipped. Bytes sent twice per reconnect are
 *   therefore at most the window (64 MiB) — the receiver flushes (and acks) every 32 MiB or 300 ms,
 *   so the window also covers one flush interval.
 * - Errors: refusals by the receiver (bad credential, bad digest, out of range, ...) are UserErrors with
 *   the receiver's message; they fail the session for good. Network errors are retried.
 */
import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { Logger } from '../util/log.ts';
import { silentLogger } from '../util/log.ts';
import { UserError, errorMessage } from '../util/errors.ts';
import { assertId } from '../util/ids.ts';
import { writeFileAtomic } from '../util/fsync.ts';
import type { DiskSpec, HeldRanges, ImageInfo } from '../store/types.ts';
import { ControlClient, RemoteError, type ControlTarget } from './control-client.ts';
import { connectPinned, normalizeFingerprint, parseHostPort, parseProxy, redactUrl, ConnectError } from './connect.ts';
import { CODEC, FRAME, FATAL_CODES, FrameAssembler, MAX_ZERO_EXTENT, MAX_JSON_FRAME, encodeExtentHeader,
  encodeJsonFrame, parseJsonBody, type WireError } from './protocol.ts';
import { sharedCodecPool, CODEC_WORKERS, type Packed } from './codec-pool.ts';
import { zstdLevelFor } from './levels.ts';
import { CompressionGovernor, DEFAULT_TIMING, type PackPhase } from './adaptive.ts';
import { TokenBucket } from './token-bucket.ts';
import { RangeSet } from './ranges.ts';
import type {
  BeginCycleRequest, CommitCycleRequest, CommitRequest, HelloFrame, ReceiverCycle, ReceiverSession, SendOptions, SessionStats,
} from './contract.ts';

export type { DiskSpec, HeldRanges, ImageInfo };

export interface SenderOptions {
  /** host[:controlPort] (default port 8080). */
  receiver: string;
  /** Data port; default: the one the receiver advertises (8703 unless configured otherwise). */
  dataPort?: number;
  /** Receiver certificate SHA-256, hex with or without colons. */
  fingerprint: string;
  /** Per-source credential; created by registering with `activationCode` when absent. */
  credentialFile: string;
  activationCode?: string;
  sourceId: string;
  sourceLabel?: string;
  /** http://[user[:pass]@]host:port */
  proxy?: string;
  proxyPassword?: string;
  /** 0–10, 0 = none. */
  compression: number;
  /** Mbps on wire bytes, 0 = unlimited. */
  bandwidthMbps: number;
  /** Send source digests at commit and have the receiver verify the committed image. */
  checksum: boolean;
  logger?: Logger;
  /** Bytes of unacknowledged payload kept for resend (default 64 MiB). */
  windowBytes?: number;
  /** Give up reconnecting after this long without progress (default 10 min). */
  resumeTimeoutMs?: number;
}

export interface SourceDigest { disk: number; sha256?: string; extents?: { offset: number; length: number; sha256: string }[] }
export interface ProgressEvent { disk: number; bytesSent: number; wireBytes: number }

interface Credential { sourceId: string; credential: string }

/** Bytes the pump may leave queued in the data socket before it waits for a drain. */
const SOCKET_BUFFER = 2 * 1024 * 1024;

interface Entry {
  seq: number;
  disk: number;
  offset: number;
  length: number;
  /** Overlaps data sent earlier in this cycle: a held range then says nothing about this version. */
  overwrite: boolean;
  packed: Promise<Packed>;
  /** The governor's phase this piece was packed in (undefined: compression off). */
  phase?: PackPhase;
  done?: Packed;
  cost: number;
  sent: boolean;
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

export class Sender implements ReceiverSession {
  readonly sourceId: string;
  private compression: number;
  private zstdLevel: number | null;
  private readonly bucket: TokenBucket;
  private readonly sessions = new Set<CycleSession>();
  private closed = false;

  private constructor(
    readonly opts: SenderOptions,
    readonly control: ControlClient,
    readonly target: ControlTarget,
    readonly credential: Credential,
    readonly dataPort: number,
    readonly log: Logger,
  ) {
    this.sourceId = credential.sourceId;
    this.compression = opts.compression;
    this.zstdLevel = zstdLevelFor(opts.compression);
    this.bucket = new TokenBucket(opts.bandwidthMbps);
  }

  static async connect(o: SenderOptions): Promise<Sender> {
    const log = (o.logger ?? silentLogger).child({ component: 'sender', sourceId: o.sourceId });
    assertId(o.sourceId, 'source id');
    checkCompression(o.compression);
    checkBandwidth(o.bandwidthMbps);
    const fingerprint = normalizeFingerprint(o.fingerprint);
    const { host, port } = parseHostPort(o.receiver, 8080);
    const proxy = o.proxy ? parseProxy(o.proxy, o.proxyPassword) : undefined;
    const target: ControlTarget = { host, port, fingerprint, proxy };
    const control = new ControlClient(target);
    let cred = await readCredential(o.credentialFile);
    if (cred && cred.sourceId !== o.sourceId) {
      throw new UserError('CREDENTIAL_MISMATCH', `credential file ${o.credentialFile} belongs to source "${cred.sourceId}", not "${o.sourceId}"`,
        'use the credential file of this source, or a new file path to register this source');
    }
    if (!cred) {
      if (!o.activationCode) {
        throw new UserError('NO_CREDENTIAL', `no credential for source "${o.sourceId}" at ${o.credentialFile} and no activation code given`,
          'pass the activation code printed by `vmlift receiver info` (--code-file or VMLIFT_CODE) to register this source');
      }
      const r = await control.register({ sourceId: o.sourceId, code: o.activationCode, label: o.sourceLabel ?? null });
      cred = { sourceId: r.sourceId, credential: r.credential };
      await writeFileAtomic(o.credentialFile, `${JSON.stringify(cred)}\n`);
      log.info({ credentialFile: o.credentialFile }, 'registered with the receiver');
    }
    control.setAuth(cred);
    const who = await control.whoami();
    log.info({ receiver: `${host}:${port}`, proxy: o.proxy ? redactUrl(o.proxy) : undefined }, 'connected to receiver');
    return new Sender(o, control, target, cred, o.dataPort ?? who.dataPort, log);
  }

  async listImages(): Promise<ImageInfo[]> {
    return (await this.control.images()).images;
  }

  /** Delete one of this source's images on the receiver (refused while an export or verify uses it). */
  async deleteImage(imageId: string): Promise<void> {
    await this.control.deleteImage(assertId(imageId, 'image id'));
  }

  async listDisks(): Promise<{ imageId: string | null; disks: DiskSpec[] }> {
    return this.control.disks();
  }

  /** Digest (first 16 bytes of SHA-256) of every `blockSize` block of a disk of an image, streamed. */
  async *blockDigests(imageId: string, disk: number, blockSize: number): AsyncIterable<Buffer> {
    let rest = Buffer.alloc(0);
    for await (const chunk of this.control.digests(imageId, { disk, blockSize })) {
      const buf = rest.length ? Buffer.concat([rest, chunk]) : chunk;
      const whole = buf.length - (buf.length % 16);
      for (let i = 0; i < whole; i += 16) yield buf.subarray(i, i + 16);
      rest = Buffer.from(buf.subarray(whole));
    }
    if (rest.length) throw new ConnectError('block digest stream ended in the middle of a digest');
  }

  async beginCycle(o: BeginCycleRequest): Promise<CycleSession> {
    if (this.closed) throw new Error('sender is closed');
    assertId(o.cycleId, 'cycle id');
    if (o.maxImages !== undefined && !(Number.isInteger(o.maxImages) && o.maxImages >= 1 && o.maxImages <= 10)) {
      throw new UserError('BAD_MAX_IMAGES', `max images ${o.maxImages} is outside 1..10`, 'choose between 1 and 10 kept images');
    }
    const s = new CycleSession(this, o);
    await s.start();
    this.sessions.add(s);
    s.once('closed', () => this.sessions.delete(s));
    return s;
  }

  setBandwidthMbps(n: number): void { checkBandwidth(n); this.bucket.setRate(n); }
  setCompression(level: number): void { checkCompression(level); this.compression = level; this.zstdLevel = zstdLevelFor(level); }
  get compressionLevel(): number { return this.compression; }
  /** @internal */ get currentZstdLevel(): number | null { return this.zstdLevel; }
  /** @internal */ takeTokens(n: number): Promise<void> { return this.bucket.take(n); }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of this.sessions) s.detach();
  }
}

function checkCompression(n: number): void {
  if (!(Number.isInteger(n) && n >= 0 && n <= 10)) {
    throw new UserError('BAD_COMPRESSION', `compression level ${n} is outside 0..10`, 'use 0 (none) to 10 (smallest); 7 is the default');
  }
}
function checkBandwidth(n: number): void {
  if (!(typeof n === 'number' && Number.isFinite(n) && n >= 0)) {
    throw new UserError('BAD_BANDWIDTH', `bandwidth limit ${n} Mbps is not a number >= 0`, 'use 0 for unlimited or a positive number of Mbps');
  }
}

async function readCredential(file: string): Promise<Credential | null> {
  let text: string;
  try { text = await readFile(file, 'utf8'); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new UserError('CREDENTIAL_FILE', `cannot read credential file ${file}: ${errorMessage(e)}`, 'check the path and its permissions');
  }
  try {
    const c = JSON.parse(text) as Credential;
    if (typeof c.sourceId === 'string' && typeof c.credential === 'string') return c;
  } catch { /* fall through */ }
  throw new UserError('CREDENTIAL_FILE', `credential file ${file} is damaged`, 'delete it and register again with a new activation code, or under a new source id');
}

/** Data pieces: 1 MiB, the image store's default chunk size (DEFAULT_CHUNK_SIZE). */
const PIECE = 1024 * 1024;
/** The receiver acks at least every 300 ms while data flows; two minutes of silence means it is gone. */
const ACK_TIMEOUT_MS = 120_000;

export class CycleSession extends EventEmitter implements ReceiverCycle {
  readonly cycleId: string;
  baseImageId: string | null = null;
  held: HeldRanges[] = [];
  readonly disks: DiskSpec[];
  private readonly maxImages: number | undefined;
  private readonly requestedBase: string | null | undefined;
  private readonly log: Logger;
  private readonly streamId = randomBytes(8).toString('hex');
  private readonly windowLimit: number;
  private readonly resumeTimeoutMs: number;

  private heldSets = new Map<number, RangeSet>();
  private sentSets = new Map<number, RangeSet>();
  private win: Entry[] = [];
  private winCost = 0;
  private sendIdx = 0;
  private nextSeq = 1;
  private sock: TLSSocket | null = null;
  private epoch = 0;
  private syncToken = 0;
  private syncSentFor = -1;
  private fatal: Error | null = null;
  private ended = false;
  private readonly changed = new Signal();
  private pumpDone: Promise<void> | null = null;
  private readonly perDisk = new Map<number, number>();
  /** Last sign of life of the receiver on the data connection (READY or ACK). */
  private lastHeard = Date.now();
  private watchdog: NodeJS.Timeout | null = null;
  private readonly st: SessionStats = { payloadBytes: 0, wireBytes: 0, extents: 0, resentBytes: 0, skippedBytes: 0, zeroBytes: 0, reconnects: 0, uncompressedForSpeedBytes: 0 };
  private readonly governor: CompressionGovernor;
  /** ms the pump waited for the socket to drain since it last wrote an extent. */
  private waitedForNetwork = 0;
  private packsOutstanding = 0;

  constructor(private readonly sender: Sender, o: BeginCycleRequest) {
    super();
    this.cycleId = o.cycleId;
    this.disks = o.disks.map((d) => ({ ...d }));
    this.maxImages = o.maxImages;
    this.requestedBase = o.baseImageId;
    this.log = sender.log.child({ cycleId: o.cycleId });
    this.windowLimit = sender.opts.windowBytes ?? 64 * 1024 * 1024;
    this.governor = new CompressionGovernor(undefined, undefined, { ...DEFAULT_TIMING, settleBytes: Math.max(DEFAULT_TIMING.settleBytes, this.windowLimit + (32 << 20)) });
    this.resumeTimeoutMs = sender.opts.resumeTimeoutMs ?? 10 * 60 * 1000;
  }

  /** @internal */
  async start(): Promise<void> {
    await this.begin();
    await this.connectData();
    this.pumpDone = this.pump();
    // a receiver that stops acknowledging (frozen, or a half-open connection) is treated as a lost connection
    this.watchdog = setInterval(() => {
      const sentUnacked = this.sendIdx > 0;
      if (this.sock && sentUnacked && Date.now() - this.lastHeard > ACK_TIMEOUT_MS) {
        this.log.warn({ silentMs: Date.now() - this.lastHeard }, 'receiver stopped acknowledging; reconnecting');
        this.sock.destroy();
      }
    }, 5000);
    this.watchdog.unref();
    this.once('closed', () => { if (this.watchdog) clearInterval(this.watchdog); });
  }

  private async begin(): Promise<void> {
    const body: BeginCycleRequest = { cycleId: this.cycleId, disks: this.disks };
    if (this.requestedBase !== undefined) body.baseImageId = this.requestedBase;
    if (this.maxImages !== undefined) body.maxImages = this.maxImages;
    const r = await this.sender.control.beginCycle(body);
    this.baseImageId = r.baseImageId;
    this.held = r.held;
    this.heldSets = new Map(r.held.map((h) => [h.disk, RangeSet.from(h.ranges)]));
  }

  private async connectData(): Promise<void> {
    const s = await connectPinned({ host: this.sender.target.host, port: this.sender.dataPort, fingerprint: this.sender.target.fingerprint, proxy: this.sender.target.proxy });
    s.setNoDelay(true);
    const reader = new FrameAssembler(MAX_JSON_FRAME + 5);
    const epoch = ++this.epoch;
    const ready = new Promise<{ durableSeq: number | null }>((resolve, reject) => {
      const onFrame = (type: number, body: Buffer) => {
        const msg = parseJsonBody(body);
        if (type === FRAME.READY) resolve({ durableSeq: typeof msg.durableSeq === 'number' ? msg.durableSeq : null });
        else if (type === FRAME.ACK) this.onAck(msg);
        else if (type === FRAME.ERROR) {
          const e = new RemoteError(0, msg as unknown as WireError);
          reject(e);
          this.onRemoteError(e);
        }
      };
      s.on('data', (chunk: Buffer) => {
        reader.push(chunk);
        try {
          for (let f = reader.next(); f; f = reader.next()) onFrame(f.type, f.body);
        } catch (e) { s.destroy(e as Error); }
      });
      const gone = (e?: Error) => {
        reject(e ?? new ConnectError('receiver closed the data connection'));
        if (this.epoch === epoch && this.sock === s) {
          this.sock = null;
          if (!this.ended && !this.fatal) this.log.warn({ err: e?.message }, 'data connection lost; will resume');
          this.changed.notify();
        }
      };
      s.on('error', (e) => gone(e));
      s.on('close', () => gone());
    });
    s.write(encodeJsonFrame(FRAME.HELLO, { sourceId: this.sender.sourceId, credential: this.sender.credential.credential, cycleId: this.cycleId, streamId: this.streamId } satisfies HelloFrame));
    const r = await ready;
    this.sock = s;
    this.lastHeard = Date.now();
    this.resync(r.durableSeq);
  }

  /** After (re)connecting: drop what the receiver holds, re-send the rest of the window from the start. */
  private resync(durableSeq: number | null): void {
    if (durableSeq !== null) {
      this.ackUpTo(durableSeq);
    } else {
      const keep: Entry[] = [];
      for (const e of this.win) {
        if (!e.overwrite && this.heldSets.get(e.disk)?.contains(e.offset, e.length)) { this.winCost -= e.cost; continue; }
        keep.push(e);
      }
      this.win = keep;
    }
    this.sendIdx = 0;
    this.syncSentFor = -1;
    this.changed.notify();
  }

  private onAck(msg: Record<string, unknown>): void {
    this.lastHeard = Date.now();
    if (typeof msg.seq === 'number') this.ackUpTo(msg.seq);
    this.changed.notify();
  }

  private ackUpTo(seq: number): void {
    let k = 0;
    while (k < this.win.length && this.win[k]!.seq <= seq) { this.winCost -= this.win[k]!.cost; k++; }
    if (k) { this.win.splice(0, k); this.sendIdx = Math.max(0, this.sendIdx - k); }
  }

  private onRemoteError(e: RemoteError): void {
    if (FATAL_CODES.has(e.code)) this.fail(e);
  }

  private fail(e: Error): void {
    if (this.fatal) return;
    this.fatal = e;
    this.log.error({ err: e.message }, 'cycle session failed');
    this.sock?.destroy();
    this.changed.notify();
  }

  /** Writes window entries in order; reconnects when the connection is gone. */
  private async pump(): Promise<void> {
    let lostSince = 0;
    let backoff = 200;
    while (!this.fatal && !this.ended) {
      if (!this.sock) {
        if (!lostSince) lostSince = Date.now();
        if (Date.now() - lostSince > this.resumeTimeoutMs) {
          this.fail(new UserError('RECEIVER_UNREACHABLE', `lost the receiver for more than ${Math.round(this.resumeTimeoutMs / 1000)} s during cycle ${this.cycleId}`,
            'check that the receiver runs and is reachable, then run the cycle again: it resumes where it stopped'));
          break;
        }
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 5000);
        if (this.ended || this.fatal) break;
        try {
          this.st.reconnects++;
          await this.begin();
          await this.connectData();
          this.log.info({ reconnects: this.st.reconnects }, 'data connection resumed');
          lostSince = 0; backoff = 200;
        } catch (e) {
          if (e instanceof ConnectError || !(e instanceof UserError)) this.log.warn({ err: errorMessage(e) }, 'reconnect failed; retrying');
          else if (FATAL_CODES.has(e.code) || !(e instanceof RemoteError)) this.fail(e);
          else this.log.warn({ err: errorMessage(e) }, 'reconnect refused for now; retrying');
        }
        continue;
      }
      const e = this.win[this.sendIdx];
      if (!e) {
        await this.changed.wait();
        continue;
      }
      let p: Packed;
      // Waiting for a pack counts against compression only while the codec workers have a queue (more
      // packs outstanding than workers): one pack in flight means the source is what is slow.
      const codecQueued = !e.done && this.packsOutstanding > CODEC_WORKERS;
      const packWaitStart = performance.now();
      try { p = e.done ?? await e.packed; } catch (err) { this.fail(err as Error); break; }
      const waitedForPack = codecQueued ? performance.now() - packWaitStart : 0;
      if (!e.done) {
        e.done = p;
        const newCost = p.payload ? p.payload.length : 64;
        this.winCost += newCost - e.cost; e.cost = newCost;
        this.changed.notify();
      }
      const payloadLen = p.payload ? p.payload.length : 0;
      const head = encodeExtentHeader({ codec: p.codec, seq: e.seq, disk: e.disk, offset: e.offset, length: e.length, digest: p.digest }, payloadLen);
      const wire = head.length + payloadLen;
      const tokenWaitStart = performance.now();
      await this.sender.takeTokens(wire);
      this.governor.observe(waitedForPack, this.waitedForNetwork + performance.now() - tokenWaitStart);
      this.waitedForNetwork = 0;
      const s = this.sock;
      if (!s || this.win[this.sendIdx] !== e) continue; // connection changed or window resynced meanwhile
      s.write(head);
      const ok = p.payload ? s.write(p.payload) : true;
      if (!e.sent) this.governor.written(e.phase, e.length);
      this.sendIdx++;
      this.st.wireBytes += wire;
      if (e.sent) this.st.resentBytes += wire;
      else {
        e.sent = true;
        this.st.extents++;
        this.st.payloadBytes += e.length;
        if (p.codec === CODEC.ZERO) this.st.zeroBytes += e.length;
        this.perDisk.set(e.disk, (this.perDisk.get(e.disk) ?? 0) + e.length);
      }
      this.emit('progress', { disk: e.disk, bytesSent: this.perDisk.get(e.disk) ?? 0, wireBytes: this.st.wireBytes } satisfies ProgressEvent);
      // Small extents (incremental cycles) would wait for a drain after each one: keep up to
      // SOCKET_BUFFER bytes queued in the socket instead, so the pump writes on without a round trip.
      if (!ok && s.writableLength > SOCKET_BUFFER) {
        const drainStart = performance.now();
        await new Promise<void>((r) => { const done = () => { s.off('drain', done); s.off('close', done); r(); }; s.on('drain', done); s.on('close', done); });
        this.waitedForNetwork += performance.now() - drainStart;
      }
    }
  }

  private check(): void {
    if (this.fatal) throw this.fatal;
    if (this.ended) throw new Error(`cycle ${this.cycleId} is already committed or aborted`);
  }

  /**
   * Queue `length` bytes at `offset` of `disk` (`data` null = zeros). Resolves when accepted into the
   * window; rejects when the session failed. `handOver`: the caller gives `data` up (it may be
   * detached afterwards); a buffer that is the whole of its own ArrayBuffer and one piece then moves
   * to the pack worker without a copy. `digest`: the caller's SHA-256 of `data`, which is not all
   * zeros (used when `data` goes out as one extent: it is not hashed again).
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
    const sent = this.sentSets.get(disk);
    if (this.heldSets.get(disk)?.contains(offset, len) && !sent?.overlaps(offset, len)) {
      this.st.skippedBytes += len;
      return;
    }
    const piece = data ? PIECE : MAX_ZERO_EXTENT;
    // pieces end on absolute multiples of PIECE (the store's chunk size): whole chunks take its fast path
    for (let pos = 0, n = 0; pos < len; pos += n) {
      n = Math.min(piece - ((offset + pos) % piece), len - pos);
      const cost = data ? n : 64;
      while (this.winCost > 0 && this.winCost + cost > this.windowLimit) {
        await this.changed.wait();
        this.check();
      }
      this.check();
      let set = this.sentSets.get(disk);
      if (!set) { set = new RangeSet(); this.sentSets.set(disk, set); }
      const off = offset + pos;
      const overwrite = set.overlaps(off, n) || (this.heldSets.get(disk)?.overlaps(off, n) ?? false);
      set.add(off, n);
      // a handed-over buffer that is one whole piece moves to the worker instead of being copied
      const owned = !!opts?.handOver && data !== null && n === data.length && data.byteOffset === 0
        && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer;
      const { level, tag: phase } = data ? this.governor.pick(this.sender.currentZstdLevel, n) : { level: null, tag: undefined };
      const packed: Promise<Packed> = data
        ? sharedCodecPool().pack(owned ? data : data.subarray(pos, pos + n), level, owned, n === len ? opts?.digest : undefined)
        : Promise.resolve({ codec: CODEC.ZERO, payload: null, digest: Buffer.alloc(32) });
      this.packsOutstanding++;
      packed.then(() => { this.packsOutstanding--; }, () => { this.packsOutstanding--; });
      this.win.push({ seq: this.nextSeq++, disk, offset: off, length: n, overwrite, packed, cost, sent: false, phase });
      this.winCost += cost;
      this.changed.notify();
    }
  }

  stats(): SessionStats { return { ...this.st, uncompressedForSpeedBytes: this.governor.rawBytes }; }

  /** Resolves when every extent sent so far is durable on the receiver (acknowledged after its store flushed). */
  async flush(): Promise<void> {
    while (this.win.length > 0) {
      this.check();
      if (this.sock && this.sendIdx === this.win.length && this.syncSentFor !== this.epoch) {
        this.syncSentFor = this.epoch;
        this.sock.write(encodeJsonFrame(FRAME.SYNC, { token: ++this.syncToken }));
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
    this.sock?.end();
    await this.pumpDone;
    const expected: HeldRanges[] = this.disks.map((d) => {
      const set = RangeSet.from(this.heldSets.get(d.disk)?.toRanges() ?? []);
      for (const r of this.sentSets.get(d.disk)?.toRanges() ?? []) set.add(r.offset, r.length);
      return { disk: d.disk, ranges: set.toRanges() };
    });
    const body: CommitCycleRequest = { meta: o.meta ?? {}, expected, verify: this.sender.opts.checksum && !!o.sourceDigests };
    if (o.sourceDigests && this.sender.opts.checksum) body.sourceDigests = o.sourceDigests;
    if (this.maxImages !== undefined) body.maxImages = this.maxImages;
    const started = Date.now();
    let backoff = 200;
    let reopened = false;
    try {
      for (;;) {
        try {
          const img = await this.sender.control.commitCycle(this.cycleId, body);
          this.log.info({ imageId: img.imageId, ...this.stats(), compressionChoices: this.governor.decisions }, 'cycle committed');
          return img;
        } catch (e) {
          if (e instanceof RemoteError && e.code === 'CYCLE_NOT_OPEN' && !reopened) {
            // a commit whose answer was lost: the image exists; or a receiver restart: reopen the cycle from its store
            const img = (await this.sender.listImages()).find((i) => i.cycleId === this.cycleId);
            if (img) return img;
            reopened = true;
            await this.begin();
            continue;
          }
          if ((e instanceof UserError && !(e instanceof ConnectError)) || Date.now() - started > this.resumeTimeoutMs) throw e;
          await sleep(backoff);
          backoff = Math.min(backoff * 2, 5000);
        }
      }
    } finally {
      this.emit('closed');
    }
  }

  async abort(): Promise<void> {
    this.ended = true;
    this.changed.notify();
    this.sock?.destroy();
    await this.pumpDone;
    try {
      await this.sender.control.abortCycle(this.cycleId, { disks: this.disks });
    } finally {
      this.emit('closed');
    }
  }

  /** @internal Sender.close(): drop the connection, leave the cycle open on the receiver for a later resume. */
  detach(): void {
    this.ended = true;
    this.sock?.destroy();
    this.changed.notify();
    this.emit('closed');
  }

  /** @internal Tests: break the data connection as a network failure would. */
  dropConnection(): void {
    this.sock?.destroy();
  }
}
