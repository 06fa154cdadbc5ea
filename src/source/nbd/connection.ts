import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { NbdError } from './errors.ts';
import { HandshakeReader } from './handshake-reader.ts';
import * as P from './protocol.ts';
import type { NbdTarget } from './uri.ts';

export interface NbdTlsSettings {
  /** PEM CA certificate(s) the server certificate must chain to (pinned CA). */
  ca?: string | Buffer;
  /** Pinned SHA-256 fingerprint of the server certificate ("AB:CD:..." or hex); replaces CA checks. */
  fingerprint256?: string;
  /** Client certificate and key for servers that verify peers (nbdkit --tls-verify-peer). */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Name the certificate must be issued for (default: the URI host, or "localhost" for Unix sockets). */
  servername?: string;
}

export interface NbdConnectSettings {
  tls?: NbdTlsSettings;
  /** Whole handshake (connect, TLS, options), ms. */
  connectTimeoutMs?: number;
  /** Fail every request when the server sends nothing for this long while requests are waiting, ms. */
  requestTimeoutMs?: number;
  /** Negotiate structured replies (default true) and base:allocation (default true). */
  structuredReplies?: boolean;
  allocationContext?: boolean;
}

export interface NbdExportInfo {
  size: number;
  transmissionFlags: number;
  minBlock: number;
  preferredBlock: number;
  maxBlock: number;
  structuredReplies: boolean;
  /** Context id of base:allocation when the server agreed to it. */
  allocationContextId: number | undefined;
}

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
  error: NbdError | undefined;
  resolve: (v: Pending) => void;
  reject: (e: NbdError) => void;
}

const EMPTY = Buffer.alloc(0);

const MAX_SMALL_PAYLOAD = 16 << 20; // block status of a huge range, or an error message; never data
const DEFAULT_MAX_BLOCK = 32 << 20; // the protocol's assumed maximum when the server does not say

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

  private constructor(sock: Duplex, target: NbdTarget, info: NbdExportInfo, leftover: Buffer, requestTimeoutMs: number) {
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

  static async connect(target: NbdTarget, settings: NbdConnectSettings = {}): Promise<NbdConnection> {
    const timeoutMs = settings.connectTimeoutMs ?? 30_000;
    const router = target.tls ? undefined : new ReadRouter();
    const raw = await openSocket(target, timeoutMs, router);
    const reader = new HandshakeReader();
    reader.attach(raw);
    let sock: Duplex = raw;
    const timer = setTimeout(() => raw.destroy(new Error(`negotiation timed out after ${timeoutMs} ms`)), timeoutMs);
    try {
      const r = await negotiate(raw, reader, target, settings, (s) => { sock = s; });
      const leftover = reader.detach();
      clearTimeout(timer);
      const conn = new NbdConnection(sock, target, r, leftover, settings.requestTimeoutMs ?? 120_000);
      if (router) router.conn = conn;
      return conn;
    } catch (e) {
      clearTimeout(timer);
      reader.detach();
      sock.destroy();
      raw.destroy();
      throw e;
    }
  }

  /** Exactly `length` bytes at `offset` (the caller respects block-size limits). */
  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const p = await this.request(P.CMD_READ, offset, length, 0, into);
    return p.buf!;
  }

  /** base:allocation descriptors from `offset` (at least one, possibly covering less or more than asked). */
  async blockStatus(offset: number, length: number): Promise<BlockStatusDescriptor[]> {
    if (this.info.allocationContextId === undefined) throw new NbdError('the server did not agree to base:allocation', { retryable: false });
    const p = await this.request(P.CMD_BLOCK_STATUS, offset, length, 0);
    if (!p.descriptors || p.descriptors.length === 0) {
      throw new NbdError(`block status at offset ${offset}: the server sent no extents for base:allocation`, { retryable: false, offset });
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
      this.dead = new NbdError('connection closed', { retryable: true });
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
    if (this.closing) return Promise.reject(new NbdError('connection is closing', { retryable: true, offset }));
    const handle = this.nextHandle;
    this.nextHandle = this.nextHandle >= 0xffffffff ? 1 : this.nextHandle + 1;
    return new Promise<Pending>((resolve, reject) => {
      const p: Pending = {
        handle, cmd, offset, length,
        buf: cmd === P.CMD_READ ? (into ? into.subarray(0, length) : Buffer.allocUnsafe(length)) : undefined,
        filled: [], filledBytes: 0, descriptors: cmd === P.CMD_BLOCK_STATUS ? [] : undefined,
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
      { retryable: cause.transient, offset, cause });
  }

  private startTimer(): void {
    if (this.timer || this.requestTimeoutMs <= 0) return;
    const every = Math.max(50, Math.min(1000, this.requestTimeoutMs / 4));
    this.timer = setInterval(() => {
      if (this.pending.size === 0) { this.stopTimer(); return; }
      if (Date.now() - this.lastActivity > this.requestTimeoutMs) {
        this.fatal(`no reply from the server for ${this.requestTimeoutMs} ms`, true);
      }
    }, every);
    this.timer.unref();
  }

  private stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** The connection can no longer be trusted: fail everything in flight, naming each request. */
  private fatal(message: string, retryable: boolean, cause?: unknown): void {
    if (this.dead) return;
    const err = new NbdError(message, { retryable, cause });
    this.dead = err;
    this.stopTimer();
    this.sock.destroy();
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) {
      const got = p.cmd === P.CMD_READ && p === this.cur
        ? ` in the middle of its reply (${p.filledBytes + (this.fillBuf === p.buf ? this.fillPos - this.fillStart : 0)} of ${p.length} bytes received)` : '';
      p.reject(this.requestError(new NbdError(message + got, { retryable }), p.cmd, p.offset, p.length));
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
    } else if (type === P.REPLY_TYPE_NONE) {
      if (len !== 0 || !(flags & P.REPLY_FLAG_DONE)) return this.protocolError(`bad NONE chunk ${where}`);
    } else if (type & P.REPLY_TYPE_ERROR_BIT) {
      if (len < 6) return this.protocolError(`error chunk of ${len} bytes ${where}`);
    } else {
      return this.protocolError(`unknown chunk type ${type} ${where}`);
    }
    if (len > MAX_SMALL_PAYLOAD) return this.protocolError(`chunk of ${len} bytes ${where}`);
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
      p.buf!.fill(0, rel, rel + size);
      p.filled.push(rel, rel + size);
      p.filledBytes += size;
    } else if (type === P.REPLY_TYPE_BLOCK_STATUS) {
      const ctx = b.readUInt32BE(0);
      if (ctx === this.info.allocationContextId) {
        for (let i = 4; i < b.length; i += 8) p.descriptors!.push({ length: b.readUInt32BE(i), flags: b.readUInt32BE(i + 4) });
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
    const retryable = code === 5 || code === 12 || code === 108;
    return new NbdError(`${cmdName(p.cmd)} of ${p.length} bytes at offset ${p.offset} from ${this.target.display}: server replied ${P.errnoText(code)}${msg ? `: ${msg}` : ''}`,
      { retryable, offset: p.offset });
  }

  private finish(p: Pending): void {
    this.pending.delete(p.handle);
    if (p.error) return p.reject(p.error);
    if (p.cmd === P.CMD_READ) {
      const gap = firstGap(p.filled, p.length);
      if (gap !== undefined) {
        return p.reject(new NbdError(`read of ${p.length} bytes at offset ${p.offset} from ${this.target.display}: ` +
          `short reply from the server: no data for offset ${p.offset + gap} (${p.filledBytes} of ${p.length} bytes received)`,
        { retryable: false, offset: p.offset + gap }));
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

/**
 * Lets a plain socket read READ payloads straight into the request's buffer (net's `onread`),
 * saving a copy and an allocation per socket read. Until a connection takes over, bytes are
 * re-emitted as 'data' for the handshake. TLS sockets keep ordinary 'data' events.
 */
class ReadRouter {
  private readonly scratch = Buffer.allocUnsafe(256 << 10);
  private direct = false;
  sock: net.Socket | undefined;
  conn: NbdConnection | undefined;
  readonly buffer = (): Buffer => {
    const t = this.conn?.directTarget();
    this.direct = t !== undefined;
    return t ?? this.scratch;
  };
  readonly callback = (n: number): void => {
    if (this.direct) this.conn!.advanceDirect(n);
    else if (this.conn) this.conn.feed(this.scratch.subarray(0, n));
    else this.sock?.emit('data', Buffer.from(this.scratch.subarray(0, n)));
  };
}

function openSocket(target: NbdTarget, timeoutMs: number, router?: ReadRouter): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const onread: net.OnReadOpts | undefined = router
      ? { buffer: router.buffer, callback: (n: number) => { router.callback(n); return true; } }
      : undefined;
    const sock = target.socketPath
      ? net.createConnection({ path: target.socketPath, ...(onread ? { onread } : {}) } as net.IpcNetConnectOpts)
      : net.createConnection({ host: target.host!, port: target.port, ...(onread ? { onread } : {}) } as net.TcpNetConnectOpts);
    if (router) router.sock = sock;
    const t = setTimeout(() => { sock.destroy(); reject(new NbdError(`connecting to ${target.display} timed out after ${timeoutMs} ms`, { retryable: true })); }, timeoutMs);
    sock.once('connect', () => { clearTimeout(t); sock.setNoDelay(true); resolve(sock); });
    sock.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      reject(new NbdError(`cannot connect to the NBD server at ${target.display}: ${e.code ?? e.message}`, { retryable: true, cause: e }));
    });
  });
}

// ---- option negotiation ----

async function negotiate(raw: net.Socket, reader: HandshakeReader, target: NbdTarget, settings: NbdConnectSettings,
  setSock: (s: Duplex) => void): Promise<NbdExportInfo> {
  let sock: Duplex = raw;
  const fail = (m: string, retryable = false): never => { throw new NbdError(`NBD negotiation with ${target.display}: ${m}`, { retryable }); };
  const greet = await reader.read(18).catch((e: Error) => fail(e.message, true));
  if (greet.readBigUInt64BE(0) !== P.NBDMAGIC) fail('not an NBD server (no NBDMAGIC greeting)');
  if (greet.readBigUInt64BE(8) !== P.IHAVEOPT) fail('the server speaks the old-style handshake, which vmlift does not support');
  const hflags = greet.readUInt16BE(16);
  if (!(hflags & P.FLAG_FIXED_NEWSTYLE)) fail('the server does not support the fixed newstyle handshake');
  const noZeroes = (hflags & P.FLAG_NO_ZEROES) !== 0;
  const cf = Buffer.alloc(4);
  cf.writeUInt32BE(P.FLAG_C_FIXED_NEWSTYLE | (noZeroes ? P.FLAG_C_NO_ZEROES : 0));
  sock.write(cf);

  const sendOpt = (opt: number, data: Buffer = Buffer.alloc(0)): void => {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(P.IHAVEOPT, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    sock.write(Buffer.concat([h, data]));
  };
  const readReply = async (opt: number): Promise<{ type: number; data: Buffer }> => {
    const h = await reader.read(20).catch((e: Error) => fail(e.message, true));
    if (h.readBigUInt64BE(0) !== P.OPTION_REPLY_MAGIC) fail('bad option reply magic');
    if (h.readUInt32BE(8) !== opt) fail(`reply to option ${h.readUInt32BE(8)} while waiting for option ${opt}`);
    const type = h.readUInt32BE(12);
    const len = h.readUInt32BE(16);
    if (len > 1 << 20) fail(`option reply of ${len} bytes`);
    const data = len ? await reader.read(len).catch((e: Error) => fail(e.message, true)) : Buffer.alloc(0);
    return { type, data };
  };
  const errText = (r: { type: number; data: Buffer }): string =>
    (P.REP_ERRORS[r.type] ?? `error reply 0x${r.type.toString(16)}`) + (r.data.length ? `: ${r.data.toString('utf8')}` : '');

  if (target.tls) {
    sendOpt(P.OPT_STARTTLS);
    const r = await readReply(P.OPT_STARTTLS);
    if (r.type !== P.REP_ACK) fail(`the server refused TLS (${errText(r)}); use nbd:// if it does not offer TLS`);
    const rest = reader.detach();
    if (rest.length) fail('unexpected bytes after the STARTTLS reply');
    sock = await startTls(raw, target, settings.tls ?? {});
    setSock(sock);
    reader.attach(sock);
  }

  const nameBuf = Buffer.from(target.exportName, 'utf8');
  let structured = false;
  if (settings.structuredReplies !== false) {
    sendOpt(P.OPT_STRUCTURED_REPLY);
    const r = await readReply(P.OPT_STRUCTURED_REPLY);
    if (r.type === P.REP_ERR_TLS_REQD) fail('the server requires TLS: use an nbds:// URI');
    structured = r.type === P.REP_ACK;
  }

  let allocationContextId: number | undefined;
  if (structured && settings.allocationContext !== false) {
    const q = Buffer.from('base:allocation');
    const d = Buffer.alloc(4 + nameBuf.length + 4 + 4 + q.length);
    let o = d.writeUInt32BE(nameBuf.length, 0);
    o += nameBuf.copy(d, o);
    o = d.writeUInt32BE(1, o);
    o = d.writeUInt32BE(q.length, o);
    q.copy(d, o);
    sendOpt(P.OPT_SET_META_CONTEXT, d);
    for (;;) {
      const r = await readReply(P.OPT_SET_META_CONTEXT);
      if (r.type === P.REP_META_CONTEXT && r.data.length >= 4) {
        if (r.data.toString('utf8', 4) === 'base:allocation') allocationContextId = r.data.readUInt32BE(0);
        continue;
      }
      if (r.type === P.REP_ERR_UNKNOWN) fail(`export "${target.exportName}" not found on the server`);
      break; // ACK, or an error: carry on without extents
    }
  }

  // NBD_OPT_GO: export name, then the information we ask for (block sizes).
  const go = Buffer.alloc(4 + nameBuf.length + 2 + 2);
  let o = go.writeUInt32BE(nameBuf.length, 0);
  o += nameBuf.copy(go, o);
  o = go.writeUInt16BE(1, o);
  go.writeUInt16BE(P.INFO_BLOCK_SIZE, o);
  sendOpt(P.OPT_GO, go);
  let size: number | undefined;
  let tflags = 0;
  let minBlock = 1;
  let preferredBlock = 4096;
  let maxBlock = DEFAULT_MAX_BLOCK;
  for (;;) {
    const r = await readReply(P.OPT_GO);
    if (r.type === P.REP_INFO) {
      if (r.data.length < 2) fail('short NBD_REP_INFO');
      const it = r.data.readUInt16BE(0);
      if (it === P.INFO_EXPORT && r.data.length >= 12) {
        size = Number(r.data.readBigUInt64BE(2));
        tflags = r.data.readUInt16BE(10);
      } else if (it === P.INFO_BLOCK_SIZE && r.data.length >= 14) {
        minBlock = r.data.readUInt32BE(2) || 1;
        preferredBlock = r.data.readUInt32BE(6) || 4096;
        maxBlock = r.data.readUInt32BE(10) || DEFAULT_MAX_BLOCK;
      }
      continue;
    }
    if (r.type === P.REP_ACK) break;
    if (r.type === P.REP_ERR_UNKNOWN) fail(`export "${target.exportName}" not found on the server`);
    if (r.type === P.REP_ERR_TLS_REQD) fail('the server requires TLS: use an nbds:// URI');
    if (r.type === P.REP_ERR_BIT + 1) {
      // Servers older than NBD_OPT_GO: NBD_OPT_EXPORT_NAME ends negotiation with size and flags.
      sendOpt(P.OPT_EXPORT_NAME, nameBuf);
      const b = await reader.read(noZeroes ? 10 : 134).catch((e: Error) => fail(e.message, true));
      size = Number(b.readBigUInt64BE(0));
      tflags = b.readUInt16BE(8);
      break;
    }
    fail(`the server refused export "${target.exportName}": ${errText(r)}`);
  }
  if (size === undefined) fail('the server did not send the export size');
  if (!Number.isSafeInteger(size)) fail(`export size ${size} is too large`);
  return {
    size: size!, transmissionFlags: tflags, minBlock, preferredBlock, maxBlock,
    structuredReplies: structured, allocationContextId,
  };
}

function startTls(raw: net.Socket, target: NbdTarget, s: NbdTlsSettings): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const host = s.servername ?? target.host ?? 'localhost';
    const pin = s.fingerprint256?.replace(/:/g, '').toUpperCase();
    const t = tls.connect({
      socket: raw,
      host,
      servername: net.isIP(host) ? undefined : host,
      ca: s.ca,
      cert: s.cert,
      key: s.key,
      minVersion: 'TLSv1.2',
      rejectUnauthorized: pin === undefined,
    });
    t.once('secureConnect', () => {
      if (pin !== undefined) {
        const got = t.getPeerCertificate().fingerprint256?.replace(/:/g, '').toUpperCase();
        if (got !== pin) {
          t.destroy();
          reject(new NbdError(`TLS to ${target.display}: server certificate fingerprint ${got ?? '(none)'} does not match the pinned ${s.fingerprint256}`, { retryable: false }));
          return;
        }
      }
      resolve(t);
    });
    t.once('error', (e) => reject(new NbdError(`TLS to ${target.display} failed: ${e.message}`, { retryable: false, cause: e })));
  });
}
