import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { BlockSource, SourceExtent } from '../types.ts';
import { UserError } from '../../util/errors.ts';
import { silentLogger, type Logger } from '../../util/log.ts';
import { retryingSource, withRetry, type RetryPolicy } from '../retry.ts';
import { openNbdConnection, type NbdConnectSettings } from './connection.ts';
import type { NbdExportInfo, NbdTlsSettings } from './handshake.ts';
import type { NbdConnection } from './transmission.ts';
import { NbdError } from './errors.ts';
import * as P from './protocol.ts';
import { parseNbdUri, type NbdTarget } from './uri.ts';
import { PositionalReader } from '../positional.ts';

export interface NbdSourceOptions extends Omit<NbdConnectSettings, 'tls'> {
  tls?: NbdTlsSettings;
  /** Connections to open when the server advertises multi-conn (default 4; 1 otherwise). */
  connections?: number;
  /** Requests in flight per connection (default 8). */
  inFlightPerConnection?: number;
  /** Cap on one read (default 2 MiB, never above the server's maximum block size). */
  maxReadSize?: number;
  retry?: RetryPolicy;
  logger?: Logger;
}

/**
 * A BlockSource over an NBD export (nbdkit, qemu-nbd, nbd-server, `nbdkit vddk` in front of VMware).
 * `open` returns it under the retry wrapper; its own reads and queries try once and throw NbdError.
 */
export class NbdSource extends PositionalReader implements BlockSource {
  readonly transport = 'nbd';
  readonly uri: string;
  readonly capacity: number;
  readonly maxReadSize: number;
  readonly maxInFlight: number;
  readonly info: NbdExportInfo;
  private readonly slots: Array<Promise<NbdConnection>>;
  private readonly settings: NbdConnectSettings;
  private readonly target: NbdTarget;
  private readonly log: Logger;
  private closed = false;

  private constructor(target: NbdTarget, first: NbdConnection, count: number, settings: NbdConnectSettings, opts: NbdSourceOptions) {
    super();
    this.target = target;
    this.uri = target.display;
    this.info = first.info;
    this.capacity = first.info.size;
    this.settings = settings;
    this.log = opts.logger ?? silentLogger;
    // Reads are widened to the server's minimum block size, so keep room for that.
    const a = first.info.minBlock;
    const limit = Math.min(opts.maxReadSize ?? 2 << 20, a > 1 ? first.info.maxBlock - 2 * a : first.info.maxBlock);
    this.maxReadSize = Math.max(a, Math.floor(limit / a) * a);
    this.slots = [Promise.resolve(first)];
    for (let i = 1; i < count; i++) this.slots.push(openNbdConnection(target, settings));
    for (const s of this.slots) s.catch(() => undefined);
    this.maxInFlight = count * (opts.inFlightPerConnection ?? 8);
  }

  get connectionCount(): number { return this.slots.length; }

  static async open(spec: string | NbdTarget, opts: NbdSourceOptions = {}): Promise<NbdSource> {
    const target = typeof spec === 'string' ? parseNbdUri(spec) : spec;
    const settings: NbdConnectSettings = { ...opts, tls: await tlsSettings(target, opts.tls) };
    const first = await withRetry(() => openNbdConnection(target, settings), opts.retry, opts.logger, `connect to ${target.display}`)
      .catch((e: unknown) => { throw toUserError(target, e); });
    const multi = (first.info.transmissionFlags & P.TFLAG_CAN_MULTI_CONN) !== 0;
    const count = multi ? Math.max(1, opts.connections ?? 4) : 1;
    (opts.logger ?? silentLogger).debug({ uri: target.display, size: first.info.size, connections: count, info: first.info }, 'nbd export opened');
    return retryingSource(new NbdSource(target, first, count, settings, opts), opts.retry, opts.logger);
  }

  protected async readAt(offset: number, length: number, target: Buffer | undefined): Promise<Buffer> {
    if (length === 0) return Buffer.alloc(0);
    // Servers with a minimum block size (e.g. qemu-nbd over 4K-sector files) need aligned requests.
    return this.readAligned(offset, length, target, this.info.minBlock, async (start, n, into) => (await this.pick()).read(start, n, into));
  }

  async *extents(offset = 0, length = this.capacity - offset): AsyncIterable<SourceExtent> {
    const end = offset + length;
    if (offset < 0 || length < 0 || end > this.capacity) throw new RangeError(`extents of [${offset}, ${end}) are outside ${this.uri} (capacity ${this.capacity})`);
    if (this.info.allocationContextId === undefined) {
      if (length > 0) yield { offset, length, data: true };
      return;
    }
    const a = this.info.minBlock;
    const maxReq = Math.floor(0xffffffff / Math.max(a, 1 << 20)) * Math.max(a, 1 << 20); // stays a multiple of the block size
    let pos = offset;
    let run: SourceExtent | undefined;
    while (pos < end) {
      const alignedAt = Math.floor(pos / a) * a;
      const reqLen = Math.min(maxReq, Math.ceil(end / a) * a - alignedAt, this.capacity - alignedAt);
      const descs = await (await this.pick()).blockStatus(alignedAt, reqLen);
      const from = pos;
      let p = alignedAt;
      for (const d of descs) {
        if (d.length === 0) throw new NbdError(`block status at offset ${p}: the server sent a zero-length extent`, { transient: false, offset: p });
        const s = Math.max(p, pos);
        const e = Math.min(p + d.length, end);
        p += d.length;
        if (e <= s) continue;
        // Only areas the server says read as zeros may be skipped; a bare hole may still have backing data.
        const data = (d.flags & P.STATE_ZERO) === 0;
        if (run && run.data === data && run.offset + run.length === s) run.length += e - s;
        else {
          if (run) yield run;
          run = { offset: s, length: e - s, data };
        }
        pos = e;
        if (pos >= end) break;
      }
      // extents that end inside the block before `pos` would have the same request asked forever
      if (pos === from) throw new NbdError(`block status at offset ${alignedAt}: the server's extents end at ${p}, before offset ${pos}, so the scan cannot advance`, { transient: false, offset: pos });
    }
    if (run) yield run;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.slots.map(async (s) => {
      const c = await s.catch(() => undefined);
      await c?.close();
    }));
  }

  /** The live connection with the fewest requests waiting; dead ones are replaced on the way. */
  private async pick(): Promise<NbdConnection> {
    if (this.closed) throw new NbdError(`${this.uri} is closed`, { transient: false });
    let best: NbdConnection | undefined;
    for (let i = 0; i < this.slots.length; i++) {
      let c = await this.slots[i]!.catch(() => undefined);
      if (!c || c.isDead) {
        const next = openNbdConnection(this.target, this.settings);
        next.catch(() => undefined);
        this.slots[i] = next;
        c = await next.catch(() => undefined);
        if (!c && i === this.slots.length - 1 && !best) return next; // surface the connect error
        if (!c) continue;
        this.log.info({ uri: this.uri, slot: i }, 'nbd connection re-established');
      }
      if (!best || c.pendingCount < best.pendingCount) best = c;
    }
    if (!best) throw new NbdError(`no connection to ${this.uri}`, { transient: true });
    return best;
  }
}

/** libnbd's tls-certificates=DIR: ca-cert.pem, and client-cert.pem + client-key.pem when present. */
async function tlsSettings(target: NbdTarget, given: NbdTlsSettings | undefined): Promise<NbdTlsSettings | undefined> {
  if (!target.tls) return given;
  const out: NbdTlsSettings = { ...given };
  const dir = target.tlsCertificates;
  if (dir) {
    const opt = async (f: string): Promise<Buffer | undefined> => readFile(path.join(dir, f)).catch(() => undefined);
    out.ca ??= await opt('ca-cert.pem');
    out.cert ??= await opt('client-cert.pem');
    out.key ??= await opt('client-key.pem');
    if (!out.ca && !out.fingerprint256) {
      throw new UserError('NBD_TLS_CONFIG', `tls-certificates=${dir} has no ca-cert.pem`, 'put the CA certificate that signed the server certificate in DIR/ca-cert.pem');
    }
  }
  return out;
}

function toUserError(target: NbdTarget, e: unknown): Error {
  if (!(e instanceof NbdError)) return e as Error;
  const m = e.message;
  let fix = 'check that the NBD server is running and that host, port, socket and export name are right';
  if (/requires TLS/.test(m)) fix = 'use an nbds:// URI with the server\'s CA (tls-certificates=DIR) or pinned fingerprint';
  else if (/not found/.test(m)) fix = 'list the server\'s exports (nbdinfo --list URI) and use one of those names';
  else if (/TLS|certificate|fingerprint/.test(m)) fix = 'give the CA that signed the server certificate, or pin its SHA-256 fingerprint';
  return new UserError('NBD_OPEN', `cannot open ${target.display}: ${m}`, fix, { cause: e });
}
