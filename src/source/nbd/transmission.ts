/**
 * The NBD transmission phase on a negotiated connection (handshake.ts): requests issued with
 * handles, replies parsed (simple and structured: data, holes, block status, errors), requests in
 * flight tracked and failed together when the connection breaks or the server stays silent.
 */
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { NbdError } from './errors.ts';
import * as P from './protocol.ts';
import type { NbdExportInfo } from './handshake.ts';
import type { NbdTarget } from './uri.ts';

export interface BlockStatusDescriptor { length: number; flags: number }

interface Pending {
  handle: number;
  cmd: number;
  offset: number;
  length: number;
  buf: Buffer | undefined;
  /** [start, end) ranges of buf filled by data/hole chunks, relative to the request. */
  filled: number[];
  filledBytes: number;
  descriptors: BlockStatusDescriptor[] | undefined;
  /** When it was sent (ms): a reply trickled byte by byte still ends at the whole-request deadline. */
  sent: number;
  /** Chunks other than data and holes (errors, block status) seen in this reply. */
  otherChunks: number;
  error: NbdError | undefined;
  resolve: (v: Pending) => void;
  reject: (e: NbdError) => void;
}

const EMPTY = Buffer.alloc(0);

/** Largest block status chunk: 2 Mi extents (a 4 GiB range of 2 KiB extents); the bound for one request is lower, see statusCap. */
export const MAX_STATUS_CHUNK = 16 << 20;
/** Largest error chunk: code, a 16-bit message length, the message, an offset. */
export const MAX_ERROR_CHUNK = 6 + 0xffff + 8;
/** A request's whole reply must arrive within this many request timeouts, however steadily it trickles. */
const REQUEST_DEADLINE_FACTOR = 10;
/** Error chunks one reply may carry: a server sending them without end never finishes the request. */
const MAX_OTHER_CHUNKS = 16;

/** A block status chunk for `length` bytes holds at most one extent per byte, plus one that runs past the end. */
function statusCap(length: number): number {
  return Math.min(MAX_STATUS_CHUNK, 4 + 8 * (length + 1));
}

/**
 * One NBD connection in the transmission phase: many requests in flight, matched by handle.
 * The reply parser copies READ payloads straight into the buffer of the request they answer,
 * so what it holds is bounded by what was requested.
 */
export class NbdConnection {
  readonly info: NbdExportInfo;
  readonly target: NbdTarget;
  private readonly sock: Duplex;
  private readonly pending = new Map<number, Pending>();
  private nextHandle = 1;
  private dead: NbdError | undefined;
  private closing = false;
  private readonly requestTimeoutMs: number;
  private lastActivity = Date.now();
  private timer: NodeJS.Timeout | undefined;

  // Parser state: fill `fillBuf[fillPos .. fillPos+fillNeed)`, then call `fillDone`.
  private readonly hdr = Buffer.alloc(20);
  private fillBuf: Buffer = this.hdr;
  private fillPos = 0;
  private fillStart = 0;
  private fillNeed = 4;
  private fillDone: () => void = () => this.onMagic();
  private cur: Pending | undefined;
  private curFlags = 0;
  private curType = 0;
  private curLen = 0;
  private small: Buffer = Buffer.alloc(0);

  /** Takes over `sock` right after the handshake; `leftover`: bytes already received after it. */
  constructor(sock: Duplex, target: NbdTarget, info: NbdExportInfo, leftover: Buffer, requestTimeoutMs: number) {
    this.sock = sock;
    this.target = target;
    this.info = info;
    this.requestTimeoutMs = requestTimeoutMs;
    sock.on('data', (b: Buffer) => this.onData(b));
    sock.on('error', (e: Error) => this.fatal(`connection error: ${e.message}`, true, e));
    sock.on('close', () => this.fatal('the server closed the connection', true));
    if (leftover.length) this.onData(leftover);
  }

  get pendingCount(): number { return this.pending.size; }
  get isDead(): boolean { return this.dead !== undefined; }

  /** Exactly `length` bytes at `offset` (the caller respects block-size limits). */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const p = await this.request(P.CMD_READ, offset, length, 0, into);
    return p.buf!;
  }

  /** base:allocation descriptors from `offset` (at least one, possibly covering less or more than asked). */
  async blockStatus(offset: number, length: number): Promise<BlockStatusDescriptor[]> {
    if (this.info.allocationContextId === undefined) throw new NbdError('the server did not agree to base:allocation', { transient: false });
    const p = await this.request(P.CMD_BLOCK_STATUS, offset, length, 0);
    if (!p.descriptors || p.descriptors.length === 0) {
      throw new NbdError(`block status at offset ${offset}: the server sent no extents for base:allocation`, { transient: false, offset });
    }
    return p.descriptors;
  }

  /** Waits for requests in flight, sends NBD_CMD_DISC and closes. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const waits = [...this.pending.values()].map((p) => new Promise<void>((res) => {
      const { resolve, reject } = p;
      p.resolve = (v) => { res(); resolve(v); };
      p.reject = (e) => { res(); reject(e); };
    }));
    await Promise.all(waits);
    if (!this.dead) {
      const h = Buffer.alloc(28);
      h.writeUInt32BE(P.REQUEST_MAGIC, 0);
      h.writeUInt16BE(P.CMD_DISC, 6);
      this.sock.write(h);
      this.sock.end();
      this.dead = new NbdError('connection closed', { transient: true });
    }
    this.stopTimer();
    await new Promise<void>((res) => {
      const t = setTimeout(() => { this.sock.destroy(); res(); }, 2000);
      if ((this.sock as net.Socket).closed || this.sock.destroyed) { clearTimeout(t); res(); return; }
      this.sock.once('close', () => { clearTimeout(t); res(); });
    });
  }

  /** Drops the connection at once; waiting requests fail. */
  destroy(reason = 'connection destroyed'): void {
    this.fatal(reason, true);
  }

  private request(cmd: number, offset: number, length: number, flags: number, into?: Buffer): Promise<Pending> {
    if (this.dead) return Promise.reject(this.requestError(this.dead, cmd, offset, length));
    if (this.closing) return Promise.reject(new NbdError('connection is closing', { transient: true, offset }));
    const handle = this.nextHandle;
    this.nextHandle = this.nextHandle >= 0xffffffff ? 1 : this.nextHandle + 1;
    return new Promise<Pending>((resolve, reject) => {
      const p: Pending = {
        handle, cmd, offset, length,
        buf: cmd === P.CMD_READ ? (into ? into.subarray(0, length) : Buffer.allocUnsafe(length)) : undefined,
        filled: [], filledBytes: 0, descriptors: cmd === P.CMD_BLOCK_STATUS ? [] : undefined, otherChunks: 0, sent: Date.now(),
        error: undefined, resolve, reject,
      };
      if (this.pending.size === 0) this.lastActivity = Date.now();
      this.pending.set(handle, p);
      const h = Buffer.allocUnsafe(28);
      h.writeUInt32BE(P.REQUEST_MAGIC, 0);
      h.writeUInt16BE(flags, 4);
      h.writeUInt16BE(cmd, 6);
      h.writeUInt32BE(0, 8);
      h.writeUInt32BE(handle, 12);
      h.writeBigUInt64BE(BigInt(offset), 16);
      h.writeUInt32BE(length, 24);
      this.queueWrite(h);
      this.startTimer();
    });
  }

  // Requests issued in the same tick go out in one write: one syscall instead of one per 28-byte header.
  private outbox: Buffer[] = [];
  private queueWrite(h: Buffer): void {
    this.outbox.push(h);
    if (this.outbox.length === 1) {
      queueMicrotask(() => {
        const all = this.outbox;
        this.outbox = [];
        if (!this.dead) this.sock.write(all.length === 1 ? all[0]! : Buffer.concat(all));
      });
    }
  }

  private requestError(cause: NbdError, cmd: number, offset: number, length: number): NbdError {
    return new NbdError(`${cmdName(cmd)} of ${length} bytes at offset ${offset} from ${this.target.display}: ${cause.message}`,
      { transient: cause.transient, offset, cause });
  }

  private startTimer(): void {
    if (this.timer || this.requestTimeoutMs <= 0) return;
    const every = Math.max(50, Math.min(1000, this.requestTimeoutMs / 4));
    this.timer = setInterval(() => {
      if (this.pending.size === 0) { this.stopTimer(); return; }
      const now = Date.now();
      if (now - this.lastActivity > this.requestTimeoutMs) {
        this.fatal(`no reply from the server for ${this.requestTimeoutMs} ms`, true);
        return;
      }
      // the oldest request first (a Map keeps insertion order)
      const oldest = this.pending.values().next().value as Pending;
      const deadline = REQUEST_DEADLINE_FACTOR * this.requestTimeoutMs;
      if (now - oldest.sent > deadline) this.fatal(`no complete reply from the server within ${deadline} ms (it keeps the connection busy without finishing)`, true);
    }, every);
    this.timer.unref();
  }

  private stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** The connection can no longer be trusted: fail everything in flight, naming each request. */
  private fatal(message: string, transient: boolean, cause?: unknown): void {
    if (this.dead) return;
    const err = new NbdError(message, { transient, cause });
    this.dead = err;
    this.stopTimer();
    this.sock.destroy();
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) {
      const got = p.cmd === P.CMD_READ && p === this.cur
        ? ` in the middle of its reply (${p.filledBytes + (this.fillBuf === p.buf ? this.fillPos - this.fillStart : 0)} of ${p.length} bytes received)` : '';
      p.reject(this.requestError(new NbdError(message + got, { transient }), p.cmd, p.offset, p.length));
    }
  }

  private protocolError(message: string): void {
    this.fatal(`protocol violation by the server: ${message}`, false);
  }

  // ---- reply parser ----

  /** Where the next socket read may land directly: the rest of a READ payload, when large enough to pay off. */
  directTarget(): Buffer | undefined {
    if (this.dead || this.fillBuf === this.hdr || this.fillBuf === this.small || this.fillNeed < 32768) return undefined;
    return this.fillBuf.subarray(this.fillPos, this.fillPos + this.fillNeed);
  }

  /** `n` bytes were read into the buffer directTarget() returned. */
  advanceDirect(n: number): void {
    if (this.dead) return;
    this.fillPos += n;
    this.fillNeed -= n;
    this.onData(EMPTY);
  }

  feed(chunk: Buffer): void { this.onData(chunk); }

  private onData(chunk: Buffer): void {
    if (this.dead) return;
    this.lastActivity = Date.now();
    let pos = 0;
    for (;;) {
      if (this.fillNeed === 0) {
        this.fillDone();
        if (this.dead) return;
        continue;
      }
      if (pos >= chunk.length) return;
      const n = Math.min(this.fillNeed, chunk.length - pos);
      chunk.copy(this.fillBuf, this.fillPos, pos, pos + n);
      pos += n;
      this.fillPos += n;
      this.fillNeed -= n;
    }
  }

  private expect(buf: Buffer, pos: number, need: number, done: () => void): void {
    this.fillBuf = buf;
    this.fillPos = pos;
    this.fillStart = pos;
    this.fillNeed = need;
    this.fillDone = done;
  }

  private nextReply(): void {
    this.cur = undefined;
    this.expect(this.hdr, 0, 4, () => this.onMagic());
  }

  private onMagic(): void {
    const magic = this.hdr.readUInt32BE(0);
    if (magic === P.SIMPLE_REPLY_MAGIC) this.expect(this.hdr, 4, 12, () => this.onSimpleHeader());
    else if (magic === P.STRUCTURED_REPLY_MAGIC && this.info.structuredReplies) this.expect(this.hdr, 4, 16, () => this.onStructuredHeader());
    else this.protocolError(`bad reply magic 0x${magic.toString(16).padStart(8, '0')}`);
  }

  private lookup(hi: number, lo: number): Pending | undefined {
    const p = hi === 0 ? this.pending.get(lo) : undefined;
    if (!p) {
      const waiting = [...this.pending.values()].map((q) => q.offset);
      this.protocolError(`reply for unknown handle 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}` +
        (waiting.length ? ` while requests at offsets ${waiting.slice(0, 8).join(', ')}${waiting.length > 8 ? ', ...' : ''} were waiting` : ''));
    }
    return p;
  }

  private onSimpleHeader(): void {
    const error = this.hdr.readUInt32BE(4);
    const p = this.lookup(this.hdr.readUInt32BE(8), this.hdr.readUInt32BE(12));
    if (!p) return;
    this.cur = p;
    if (error !== 0) {
      p.error = this.serverError(p, error, '');
      this.finish(p);
      this.nextReply();
    } else if (p.cmd === P.CMD_READ) {
      this.expect(p.buf!, 0, p.length, () => {
        p.filled.push(0, p.length);
        p.filledBytes = p.length;
        this.finish(p);
        this.nextReply();
      });
    } else {
      this.finish(p);
      this.nextReply();
    }
  }

  private onStructuredHeader(): void {
    const flags = this.hdr.readUInt16BE(4);
    const type = this.hdr.readUInt16BE(6);
    const len = this.hdr.readUInt32BE(16);
    const p = this.lookup(this.hdr.readUInt32BE(8), this.hdr.readUInt32BE(12));
    if (!p) return;
    this.cur = p;
    this.curFlags = flags;
    this.curType = type;
    this.curLen = len;
    const where = `in the reply to the ${cmdName(p.cmd)} at offset ${p.offset}`;
    if (type === P.REPLY_TYPE_OFFSET_DATA) {
      if (p.cmd !== P.CMD_READ) return this.protocolError(`data chunk ${where}`);
      if (len < 8) return this.protocolError(`data chunk of ${len} bytes ${where}`);
      this.small = Buffer.allocUnsafe(8);
      this.expect(this.small, 0, 8, () => this.onDataOffset(p));
      return;
    }
    if (type === P.REPLY_TYPE_OFFSET_HOLE) {
      if (p.cmd !== P.CMD_READ) return this.protocolError(`hole chunk ${where}`);
      if (len !== 12) return this.protocolError(`hole chunk of ${len} bytes ${where}`);
    } else if (type === P.REPLY_TYPE_BLOCK_STATUS) {
      if (p.cmd !== P.CMD_BLOCK_STATUS) return this.protocolError(`block status chunk ${where}`);
      if (len < 12 || (len - 4) % 8 !== 0) return this.protocolError(`block status chunk of ${len} bytes ${where}`);
      if (len > statusCap(p.length)) return this.protocolError(`block status chunk of ${len} bytes ${where} of ${p.length} bytes (limit ${statusCap(p.length)})`);
    } else if (type === P.REPLY_TYPE_NONE) {
      if (len !== 0 || !(flags & P.REPLY_FLAG_DONE)) return this.protocolError(`bad NONE chunk ${where}`);
    } else if (type & P.REPLY_TYPE_ERROR_BIT) {
      if (len < 6) return this.protocolError(`error chunk of ${len} bytes ${where}`);
      if (len > MAX_ERROR_CHUNK) return this.protocolError(`error chunk of ${len} bytes ${where} (limit ${MAX_ERROR_CHUNK})`);
    } else {
      return this.protocolError(`unknown chunk type ${type} ${where}`);
    }
    if (type !== P.REPLY_TYPE_OFFSET_HOLE && type !== P.REPLY_TYPE_NONE && ++p.otherChunks > MAX_OTHER_CHUNKS) {
      return this.protocolError(`more than ${MAX_OTHER_CHUNKS} error or block status chunks ${where}`);
    }
    this.small = Buffer.allocUnsafe(len);
    this.expect(this.small, 0, len, () => this.onSmallChunk(p));
  }

  private onDataOffset(p: Pending): void {
    const off = Number(this.small.readBigUInt64BE(0));
    const dlen = this.curLen - 8;
    const rel = off - p.offset;
    if (rel < 0 || rel + dlen > p.length) {
      return this.protocolError(`data chunk for offset ${off} length ${dlen} outside the read at offset ${p.offset} length ${p.length}`);
    }
    if (p.filledBytes + dlen > p.length) return this.protocolError(`overlapping data chunks for the read at offset ${p.offset} length ${p.length}`);
    this.expect(p.buf!, rel, dlen, () => {
      p.filled.push(rel, rel + dlen);
      p.filledBytes += dlen;
      this.chunkDone(p);
    });
  }

  private onSmallChunk(p: Pending): void {
    const b = this.small;
    const type = this.curType;
    if (type === P.REPLY_TYPE_OFFSET_HOLE) {
      const off = Number(b.readBigUInt64BE(0));
      const size = b.readUInt32BE(8);
      const rel = off - p.offset;
      if (rel < 0 || rel + size > p.length || size === 0) {
        return this.protocolError(`hole chunk for offset ${off} length ${size} outside the read at offset ${p.offset} length ${p.length}`);
      }
      if (p.filledBytes + size > p.length) return this.protocolError(`overlapping data chunks for the read at offset ${p.offset} length ${p.length}`);
      p.buf!.fill(0, rel, rel + size);
      p.filled.push(rel, rel + size);
      p.filledBytes += size;
    } else if (type === P.REPLY_TYPE_BLOCK_STATUS) {
      const ctx = b.readUInt32BE(0);
      const where = `block status at offset ${p.offset} length ${p.length}`;
      if (ctx !== this.info.allocationContextId) return this.protocolError(`${where}: extents for context ${ctx}, which was never negotiated`);
      if (p.descriptors!.length) return this.protocolError(`${where}: a second block status chunk for base:allocation`);
      let at = p.offset;
      for (let i = 4; i < b.length; i += 8) {
        const length = b.readUInt32BE(i);
        if (length === 0) return this.protocolError(`${where}: a zero-length extent at offset ${at}`);
        at += length;
        if (at > this.info.size) return this.protocolError(`${where}: extents run to offset ${at}, past the end of the export (${this.info.size} bytes)`);
        p.descriptors!.push({ length, flags: b.readUInt32BE(i + 4) });
      }
    } else if (type & P.REPLY_TYPE_ERROR_BIT) {
      const code = b.readUInt32BE(0);
      const mlen = b.readUInt16BE(4);
      if (6 + mlen > b.length) return this.protocolError(`error chunk message overruns the chunk (reply to offset ${p.offset})`);
      let msg = b.toString('utf8', 6, 6 + mlen);
      if (type === P.REPLY_TYPE_ERROR_OFFSET && b.length >= 6 + mlen + 8) {
        msg += `${msg ? ' ' : ''}(at offset ${b.readBigUInt64BE(6 + mlen)})`;
      }
      if (!p.error) p.error = this.serverError(p, code === 0 ? 5 : code, msg);
    }
    this.chunkDone(p);
  }

  private chunkDone(p: Pending): void {
    if (this.curFlags & P.REPLY_FLAG_DONE) this.finish(p);
    this.nextReply();
  }

  private serverError(p: Pending, code: number, msg: string): NbdError {
    // EIO, ENOMEM and ESHUTDOWN may pass on a retry; the rest describe the request itself.
    const transient = code === 5 || code === 12 || code === 108;
    return new NbdError(`${cmdName(p.cmd)} of ${p.length} bytes at offset ${p.offset} from ${this.target.display}: server replied ${P.errnoText(code)}${msg ? `: ${msg}` : ''}`,
      { transient, offset: p.offset });
  }

  private finish(p: Pending): void {
    this.pending.delete(p.handle);
    if (p.error) return p.reject(p.error);
    if (p.cmd === P.CMD_READ) {
      const gap = firstGap(p.filled, p.length);
      if (gap !== undefined) {
        return p.reject(new NbdError(`read of ${p.length} bytes at offset ${p.offset} from ${this.target.display}: ` +
          `short reply from the server: no data for offset ${p.offset + gap} (${p.filledBytes} of ${p.length} bytes received)`,
        { transient: false, offset: p.offset + gap }));
      }
    }
    p.resolve(p);
  }
}

/** The first byte of [0, length) that no [start, end) pair covers, or undefined when all are covered once. */
function firstGap(pairs: number[], length: number): number | undefined {
  if (pairs.length === 2 && pairs[0] === 0 && pairs[1] === length) return undefined;
  const ranges: Array<[number, number]> = [];
  for (let i = 0; i < pairs.length; i += 2) ranges.push([pairs[i]!, pairs[i + 1]!]);
  ranges.sort((a, b) => a[0] - b[0]);
  let at = 0;
  for (const [s, e] of ranges) {
    if (s > at) return at;
    if (s < at) return s; // overlapping chunks: the protocol forbids them, so trust neither
    at = e;
  }
  return at < length ? at : undefined;
}

function cmdName(cmd: number): string {
  return cmd === P.CMD_READ ? 'read' : cmd === P.CMD_BLOCK_STATUS ? 'block status' : `command ${cmd}`;
}
