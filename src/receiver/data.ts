/**
 * One data connection (port 8703): HELLO → READY, then EXTENT and SYNC frames in; ACK frames out.
 *
 * Frames are validated on arrival (disk, range, codec, lengths: extent-checks.ts), verified off the main thread
 * (decompress + SHA-256 in the codec pool) and written to the cycle in arrival order. The socket is
 * paused while more than PENDING_LIMIT bytes wait, so memory per connection stays bounded. The store
 * is flushed every FLUSH_BYTES or FLUSH_MS; each flush is followed by ACK {seq}: everything up to seq
 * is durable. A refused frame ends the connection with an ERROR frame; the cycle stays open (resumable)
 * and nothing becomes an image until a commit.
 */
import type { TLSSocket } from 'node:tls';
import type { Logger } from '../util/log.ts';
import { errorMessage, errorReport } from '../util/errors.ts';
import { assertId } from '../util/ids.ts';
import { readIntoBuffer, readIntoTargets } from '../util/socket-read-buffer.ts';
import { StoreError } from '../store/types.ts';
import { INLINE_HASH_MAX, nativeDigest } from '../util/native-digest.ts';
import { CODEC, FRAME, FrameAssembler, MAX_FRAME, MAX_JSON_FRAME, ProtocolError, SAME_VERSION_FIX, encodeJsonFrame, parseJsonBody, type WireError } from '../transfer/protocol.ts';
import type { AckFrame, ReadyFrame } from '../transfer/contract.ts';
import type { CodecPool } from '../transfer/codec-pool.ts';
import { WIRE_VERSION, declaredWireVersion, wireVersionRefusal } from '../transfer/wire-version.ts';
import { authenticate } from './identity.ts';
import { checkExtentFrame } from './extent-checks.ts';
import { NoSpaceError, asNoSpace } from './space.ts';
import type { OpenCycles, OpenCycle, CycleFeed } from './open-cycles.ts';
import { crashPoint } from '../util/crash.ts';

export const PENDING_LIMIT = 16 * 1024 * 1024;
export const FLUSH_BYTES = 32 * 1024 * 1024;
export const FLUSH_MS = 300;
/**
 * Store writes in flight per connection: at most this many, and at most WRITE_BYTES_IN_FLIGHT of
 * extent data. Small extents of an incremental cycle each wait on reading the chunk they patch:
 * many in flight hide that latency (4 at a time left the receiver idle half of an incremental).
 */
const WRITES_IN_FLIGHT = 64;
/** The reused buffer TLS records are decrypted into (a record is at most 16 KiB). */
const READ_BUFFER = 64 * 1024;
const WRITE_BYTES_IN_FLIGHT = 8 * 1024 * 1024;
const HELLO_TIMEOUT_MS = 15000;
/** Bytes a failed write is said to need at least, when the sender gave no estimate: the writes in flight. */
const MAX_WRITE_NEED = WRITE_BYTES_IN_FLIGHT;

type Item =
  | { kind: 'extent'; seq: number; disk: number; offset: number; length: number; data: Promise<Buffer | null>; digest: Buffer; cost: number; storeChecks: boolean }
  | { kind: 'sync'; token: unknown };

/**
 * Bytes of received-but-unwritten frames over all connections. A connection pauses its socket when
 * its own share passes PENDING_LIMIT or the total passes `limit`, and resumes when both fell back.
 */
export class PendingBudget {
  used = 0;
  private readonly paused = new Set<DataConnection>();
  constructor(readonly limit = 64 * 1024 * 1024) {}
  over(): boolean { return this.used > this.limit; }
  park(c: DataConnection): void { this.paused.add(c); }
  release(bytes: number): void {
    this.used -= bytes;
    if (this.used > this.limit * 0.75) return;
    for (const c of this.paused) if (c.tryResume()) this.paused.delete(c);
  }
  forget(c: DataConnection): void { this.paused.delete(c); }
}

export interface DataContext { dataDir: string; cycles: OpenCycles; pool: CodecPool; log: Logger; budget: PendingBudget }

export class DataConnection implements CycleFeed {
  /**
   * The first frame (the HELLO) may be only a HELLO's length: a frame's buffer is allocated when its
   * length arrives, and a peer not yet let in must not make the receiver hold 4 MiB per connection.
   * The socket is paused during the HELLO, so what may follow it before READY is one read at most.
   */
  private readonly reader = new FrameAssembler(MAX_FRAME, undefined, 1 + MAX_JSON_FRAME);
  private oc: OpenCycle | null = null;
  private streamId = '';
  private sourceId: string | null = null;
  private helloSeen = false;
  private inHello = false;
  private queue: Item[] = [];
  private pending = 0;
  private paused = false;
  private running = false;
  private closed = false;
  private refused = false;
  /** A store write failed: from then on nothing more is claimed durable for this stream. */
  private writeFailed = false;
  private inflight: Promise<void>[] = [];
  private inflightLengths: number[] = [];
  private inflightBytes = 0;
  /** Flushes in call order; the last one started from the pipeline (awaited before the next). */
  private flushChain: Promise<void> = Promise.resolve();
  private lastFlush: Promise<void> = Promise.resolve();
  private lastIssued = 0;
  private unflushed = 0;
  private flushTimer: NodeJS.Timeout | null = null;
  private drained: Promise<void>;
  private resolveDrained!: () => void;
  private log: Logger;

  constructor(private readonly s: TLSSocket, private readonly ctx: DataContext) {
    this.log = ctx.log.child({ peer: `${s.remoteAddress}:${s.remotePort}` });
    this.drained = new Promise((r) => { this.resolveDrained = r; });
    const helloTimer = setTimeout(() => { if (!this.helloSeen) this.refuse({ code: 'BAD_FRAME', message: 'no HELLO within 15 s', fix: SAME_VERSION_FIX }); }, HELLO_TIMEOUT_MS);
    // Reads land straight in the frame being assembled (no copy; docs/transfer.md); where Node does
    // not allow that, in one reused buffer copied into the frames (no ArrayBuffer per TLS record).
    const installed = readIntoTargets(s, () => this.readTarget(), (n) => this.onLanded(n), (b) => this.onData(b))
      || readIntoBuffer(s, READ_BUFFER, (b) => this.onData(b));
    if (!installed) s.on('data', (chunk: Buffer) => this.onData(chunk));
    s.on('error', (e) => this.log.debug({ err: e.message }, 'data socket error'));
    s.on('close', () => { clearTimeout(helloTimer); this.onClose(); });
  }

  private scratch: Buffer | null = null;
  /** Where the socket's next read goes: the frame being assembled; a scratch buffer once nothing more is taken. */
  private readTarget(): Uint8Array {
    if (this.closed || this.refused) return (this.scratch ??= Buffer.allocUnsafeSlow(16 * 1024));
    return this.reader.target();
  }

  private onLanded(n: number): void {
    if (this.closed || this.refused) return;
    this.reader.landed(n);
    this.takeFrames();
  }

  private onData(chunk: Buffer): void {
    if (this.closed || this.refused) return;
    this.reader.push(chunk);
    this.takeFrames();
  }

  private takeFrames(): void {
    try {
      while (!this.refused && !this.inHello) {
        const f = this.reader.next();
        if (!f) break;
        this.onFrame(f.type, f.body, f.owned);
      }
    } catch (e) {
      if (e instanceof ProtocolError) this.refuse(errorReport(e));
      else this.refuse(internal(errorMessage(e)));
    }
  }

  private onFrame(type: number, body: Buffer, owned: boolean): void {
    if (!this.helloSeen) {
      if (type !== FRAME.HELLO) throw new ProtocolError('BAD_FRAME', 'the first frame must be HELLO', { fix: SAME_VERSION_FIX });
      this.helloSeen = true;
      this.inHello = true;
      this.s.pause();
      void this.hello(parseJsonBody(body)).catch((e) => this.refuse(internal(errorMessage(e)))).finally(() => {
        this.inHello = false;
        if (this.oc && !this.closed) { this.s.resume(); this.onData(Buffer.alloc(0)); }
      });
      return;
    }
    if (!this.oc) throw new ProtocolError('BAD_FRAME', 'frame before READY', { fix: SAME_VERSION_FIX });
    if (type === FRAME.EXTENT) this.onExtent(body, owned);
    else if (type === FRAME.SYNC) { this.queue.push({ kind: 'sync', token: syncToken(parseJsonBody(body)) }); this.kick(); }
    else throw new ProtocolError('BAD_FRAME', `unexpected frame type ${type}`, { fix: SAME_VERSION_FIX });
  }

  private async hello(msg: Record<string, unknown>): Promise<void> {
    const { streamId } = msg;
    let sourceId: string; let cycleId: string;
    try { sourceId = assertId(msg.sourceId, 'source id'); cycleId = assertId(msg.cycleId, 'cycle id'); } catch (e) { return this.refuse(errorReport(e)); }
    this.sourceId = sourceId;
    this.log = this.log.child({ sourceId, cycleId });
    if (!(await authenticate(this.ctx.dataDir, sourceId, msg.credential))) {
      return this.refuse({ code: 'AUTH', message: `missing or wrong credential for source ${sourceId}`, fix: 'pass the credential file written when this source registered' });
    }
    const wire = declaredWireVersion(msg.wireVersion);
    if (wire !== WIRE_VERSION) return this.refuse(wireVersionRefusal(wire));
    if (typeof streamId !== 'string' || !/^[0-9a-f]{1,64}$/.test(streamId)) return this.refuse({ code: 'BAD_FRAME', message: 'HELLO lacks a valid streamId', fix: SAME_VERSION_FIX });
    const oc = this.ctx.cycles.get(sourceId, cycleId);
    if (!oc) return this.refuse({ code: 'CYCLE_NOT_OPEN', message: `cycle ${cycleId} of source ${sourceId} is not open; begin it on the control port first`, fix: 'begin (or resume) the cycle first' });
    if (oc.committing) return this.refuse({ code: 'CYCLE_BUSY', message: `cycle ${cycleId} is being committed`, fix: 'wait for the commit to end', transient: true });
    if (oc.feed && oc.feed !== this) await oc.feed.detach();
    if (this.closed) return;
    oc.feed = this;
    this.oc = oc;
    this.streamId = streamId;
    const durableSeq = oc.streams.has(streamId) ? oc.streams.get(streamId)! : null;
    if (durableSeq === null) oc.streams.set(streamId, 0);
    this.lastIssued = durableSeq ?? 0;
    this.s.write(encodeJsonFrame(FRAME.READY, { durableSeq } satisfies ReadyFrame));
    this.log.debug({ durableSeq }, 'data stream ready');
  }

  private onExtent(body: Buffer, owned: boolean): void {
    const { header: h, payload } = checkExtentFrame(body, this.oc!.writer.disks, this.oc!.cycleId);
    // the memory the frame holds (a pooled buffer may be larger than the frame)
    const cost = owned ? body.buffer.byteLength : body.length;
    const digest = Buffer.from(h.digest); // copied: the frame's buffer may move to a worker
    let data: Promise<Buffer | null>;
    // A raw extent of one whole chunk: the store checks its digest as it appends it (one native call
    // instead of a digest hop and two write hops; docs/store.md, "Checked appends").
    // Any other raw extent is hashed by the codec pool on arrival, so its BAD_DIGEST refuses the frame before its write is issued.
    const storeChecks = h.codec === CODEC.RAW && payload.length > INLINE_HASH_MAX && nativeDigest() !== null && this.oc!.writer.wholeChunk(h.disk, h.offset, h.length);
    if (h.codec === CODEC.ZERO) {
      data = Promise.resolve(null);
    } else if (storeChecks) {
      data = Promise.resolve(payload);
    } else {
      // decompressed into a pooled frame buffer, given back once the store wrote it (below)
      data = this.ctx.pool.unpack(h.codec, payload, h.length, digest, owned, h.codec === CODEC.ZSTD ? this.reader.buffer(h.length) : undefined);
      data.catch(() => undefined);
    }
    this.queue.push({ kind: 'extent', seq: h.seq, disk: h.disk, offset: h.offset, length: h.length, data, digest, cost, storeChecks });
    this.pending += cost;
    this.ctx.budget.used += cost;
    if ((this.pending > PENDING_LIMIT || this.ctx.budget.over()) && !this.paused) {
      this.paused = true;
      this.s.pause();
      this.ctx.budget.park(this);
    }
    this.kick();
  }

  private kick(): void {
    if (!this.running) { this.running = true; void this.process(); }
  }

  private async process(): Promise<void> {
    try {
      while (this.queue.length && !this.refused) {
        const item = this.queue[0]!;
        if (item.kind === 'sync') {
          await this.flush();
          this.queue.shift();
          if (!this.closed) this.s.write(encodeJsonFrame(FRAME.ACK, { seq: this.lastIssued, token: item.token } satisfies AckFrame));
          continue;
        }
        const data = await item.data;
        if (this.refused) break;
        // the digest was just checked against the bytes (or the store checks it): the store may name the chunk by it
        crashPoint('receiver:extent');
        const w = this.oc!.writer.writeExtent(item.disk, item.offset, item.length, data, data ? { sha256: item.digest, check: item.storeChecks } : undefined);
        // the store keeps no reference once the write is done (whole chunks are written, partial ones copied)
        if (data) w.then(() => this.reader.recycle(data.buffer), () => undefined);
        else w.catch(() => undefined);
        this.inflight.push(w);
        this.inflightLengths.push(item.length);
        this.inflightBytes += item.length;
        while (this.inflight.length >= WRITES_IN_FLIGHT || this.inflightBytes > WRITE_BYTES_IN_FLIGHT) {
          this.inflightBytes -= this.inflightLengths.shift()!;
          await this.inflight.shift();
        }
        this.lastIssued = item.seq;
        this.oc!.writtenBytes += item.length;
        this.unflushed += item.length;
        this.queue.shift();
        this.pending -= item.cost;
        this.tryResume();
        this.ctx.budget.release(item.cost);
        if (this.unflushed >= FLUSH_BYTES) {
          // The store flush (syncfs, index, journal) runs while the next frames are verified and
          // written; only the ACK waits for it. At most one flush interval runs ahead of durability.
          await this.lastFlush;
          this.lastFlush = this.flush();
          this.lastFlush.catch((e) => this.refuse(this.failure(e, 'flush failed')));
        } else this.armFlushTimer();
      }
    } catch (e) {
      if (!(e instanceof ProtocolError)) this.writeFailed = true;
      if (e instanceof ProtocolError) this.refuse(errorReport(e));
      else this.refuse(this.failure(e, 'write failed'));
    } finally {
      this.running = false;
    }
    if (this.queue.length && !this.refused) this.kick();
    else if (this.closed) await this.finish();
  }

  /** Resume a paused socket once its backlog and the receiver-wide backlog are low. */
  tryResume(): boolean {
    if (!this.paused) return true;
    if (this.closed || this.refused) return true;
    if (this.pending >= PENDING_LIMIT / 2 || this.ctx.budget.used > this.ctx.budget.limit * 0.75) return false;
    this.paused = false;
    this.s.resume();
    return true;
  }

  private armFlushTimer(): void {
    if (this.flushTimer || this.closed) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = null;
      if (this.running || this.unflushed === 0) { if (this.unflushed) this.armFlushTimer(); return; }
      this.running = true;
      this.flush().catch((e) => { this.writeFailed = true; this.refuse(this.failure(e, 'flush failed')); }).finally(() => {
        this.running = false;
        if (this.queue.length && !this.refused) this.kick();
        else if (this.closed || this.refused) void this.finish();
      });
    }, FLUSH_MS);
  }

  /**
   * Wait for the writes issued so far, flush the store, publish the durable sequence number (ACK).
   * Flushes run one after the other in call order; a failed one fails the stream for good.
   */
  private flush(): Promise<void> {
    const oc = this.oc;
    if (!oc) return Promise.resolve();
    const pending = this.inflight;
    this.inflight = [];
    this.inflightLengths = [];
    this.inflightBytes = 0;
    const seq = this.lastIssued;
    const hasData = this.unflushed > 0;
    this.unflushed = 0;
    const run = this.flushChain.then(async () => {
      try {
        await Promise.all(pending);
        if (hasData) {
          const t0 = performance.now();
          await oc.writer.flush();
          this.log.debug({ ms: Math.round(performance.now() - t0), seq }, 'store flushed');
        }
      } catch (e) {
        this.writeFailed = true;
        throw e;
      }
      if (this.writeFailed) return;
      oc.streams.set(this.streamId, seq);
      if (!this.closed && seq) this.s.write(encodeJsonFrame(FRAME.ACK, { seq } satisfies AckFrame));
    });
    this.flushChain = run.catch(() => undefined);
    return run;
  }

  /** What a failed store write or flush tells the peer: NO_SPACE with its figures for a full filesystem, else the store's error or INTERNAL. */
  private failure(e: unknown, what: string): WireError {
    const oc = this.oc;
    const full = oc ? asNoSpace(e, this.ctx.cycles.store.root, oc.neededBytes(MAX_WRITE_NEED), `cycle ${oc.cycleId} of source ${oc.sourceId} stopped (${what})`, oc.estimatedBytes === undefined) : e;
    if (full instanceof NoSpaceError) {
      this.log.warn({ freeBytes: full.freeBytes, neededBytes: full.neededBytes }, 'store is full; the cycle stays open and resumes once space is freed');
      return errorReport(full);
    }
    if (e instanceof StoreError) return what === 'write failed' || e.code === 'BAD_DIGEST' ? errorReport(e) : { ...errorReport(e), message: `${what}: ${e.message}` };
    return internal(`${what}: ${errorMessage(e)}`);
  }

  /** Refuse: tell the peer why (code, message, fix), log it, close. The cycle stays open and resumable. */
  refuse(why: WireError): void {
    if (this.refused) return;
    this.refused = true;
    this.log.warn({ errCode: why.code, reason: why.message }, 'data connection refused');
    this.dropQueue();
    if (!this.s.destroyed) {
      this.s.end(encodeJsonFrame(FRAME.ERROR, why));
      setTimeout(() => this.s.destroy(), 2000).unref();
    }
    if (!this.running) void this.finish();
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.flushTimer) { clearTimeout(this.flushTimer); this.flushTimer = null; }
    if (!this.running) void this.finish();
  }

  private dropQueue(): void {
    let freed = 0;
    for (const it of this.queue) if (it.kind === 'extent') freed += it.cost;
    this.queue = [];
    this.pending -= freed;
    this.ctx.budget.forget(this);
    this.ctx.budget.release(freed);
  }

  private finishing = false;
  /** After close: what was fully received is written and flushed, then the cycle is free for the next connection. */
  private async finish(): Promise<void> {
    if (this.finishing) return;
    this.finishing = true;
    try {
      if (this.oc) await this.flush();
    } catch (e) {
      this.log.error({ err: errorMessage(e) }, 'flush after disconnect failed');
    } finally {
      if (this.oc && this.oc.feed === this) this.oc.feed = null;
      this.dropQueue();
      this.resolveDrained();
    }
  }

  detach(): Promise<void> {
    this.s.destroy();
    this.onClose();
    return this.drained;
  }
}

/** A SYNC's token is echoed in its ACK: a number (SyncFrame), never a structure to serialise (a JSON nested 30,000 deep overflowed the stack). */
function syncToken(msg: Record<string, unknown>): number | undefined {
  const t = msg.token;
  if (t === undefined || (typeof t === 'number' && Number.isFinite(t))) return t;
  throw new ProtocolError('BAD_FRAME', 'SYNC token must be a number', { fix: SAME_VERSION_FIX });
}

/** A failure of the receiver itself, not of what the peer sent. */
function internal(message: string): WireError {
  return { code: 'INTERNAL', message };
}
