import type { TLSSocket } from 'node:tls';
import { buildConnector, Pool, type Dispatcher } from 'undici';
import type { BlockSource } from '../types.ts';
import { CodedError, UserError } from '../../util/errors.ts';
import { silentLogger, type Logger } from '../../util/log.ts';
import { retryingSource, withRetry, type RetryPolicy } from '../retry.ts';
import { checkDescriptor, parseDescriptor } from './descriptor.ts';
import { PositionalReader } from '../positional.ts';

export type HttpTrust = { thumbprint: string } | { ca: string | Buffer } | { insecure: true };

export interface HttpDatastoreOptions {
  /** https://VCENTER/folder/<path>.vmdk?dcPath=..&dsName=.. : a descriptor or its -flat extent. */
  url: string;
  /** The vSphere session cookie ("vmware_soap_session=..."), or a getter so a re-login elsewhere is picked up. */
  cookie?: string | (() => string | undefined);
  /**
   * Called when the server refused `stale` (HTTP 401/403: the session ended, e.g. expired or vCenter
   * restarted), before the read's retry: logs in again so the getter gives a live cookie.
   */
  refreshCookie?: (stale: string | undefined) => Promise<void>;
  /** Pinned SHA-256 thumbprint of the server certificate, a CA, or (lab only) no check. */
  trust: HttpTrust;
  /** A dispatcher to use instead of our own pool (e.g. the vSphere session's pinned agent). */
  dispatcher?: Dispatcher;
  /** Parallel HTTP connections (default 4) and reads in flight (default 8). */
  connections?: number;
  maxInFlight?: number;
  /** Largest Range one read asks for (default 4 MiB). */
  maxReadSize?: number;
  timeoutMs?: number;
  retry?: RetryPolicy;
  logger?: Logger;
}

/** A failed request to the datastore URL; `transient` when asking again may succeed (lost connection, 5xx, 429, expired cookie). */
class HttpReadError extends CodedError {
  readonly status: number | undefined;
  constructor(message: string, transient: boolean, status?: number, cause?: unknown) {
    super('HTTP_DS_READ', message, {
      transient, cause,
      fix: 'check that the vCenter/ESXi host is reachable on 443 and that the vCenter session is still logged in',
    });
    this.status = status;
  }
}

/**
 * Range reads of a flat VMDK through vCenter's or ESXi's /folder datastore URL. `open` returns it
 * under the retry wrapper; its own reads try once and throw HttpReadError.
 */
export class HttpDatastoreSource extends PositionalReader implements BlockSource {
  readonly transport = 'http-datastore';
  readonly uri: string;
  readonly capacity: number;
  readonly maxReadSize: number;
  readonly maxInFlight: number;
  private readonly flatUrl: URL;
  private readonly dispatcher: Dispatcher;
  private readonly ownDispatcher: boolean;
  private readonly cookie: () => string | undefined;
  private readonly refreshCookie: ((stale: string | undefined) => Promise<void>) | undefined;
  private readonly retry: RetryPolicy;
  private readonly log: Logger;
  private readonly timeoutMs: number;

  private constructor(flatUrl: URL, capacity: number, d: Dispatcher, own: boolean, o: HttpDatastoreOptions) {
    super();
    this.flatUrl = flatUrl;
    this.uri = displayUrl(flatUrl);
    this.capacity = capacity;
    this.dispatcher = d;
    this.ownDispatcher = own;
    this.cookie = typeof o.cookie === 'function' ? o.cookie : () => o.cookie as string | undefined;
    this.refreshCookie = o.refreshCookie;
    this.maxReadSize = o.maxReadSize ?? 4 << 20;
    this.maxInFlight = o.maxInFlight ?? 8;
    this.retry = o.retry ?? {};
    this.log = o.logger ?? silentLogger;
    this.timeoutMs = o.timeoutMs ?? 60_000;
  }

  static async open(o: HttpDatastoreOptions): Promise<HttpDatastoreSource> {
    let url: URL;
    try { url = new URL(o.url); } catch {
      throw new UserError('HTTP_DS_URL', `"${o.url}" is not a URL`, 'use https://VCENTER/folder/<vm>/<disk>.vmdk?dcPath=<datacenter>&dsName=<datastore>');
    }
    if (url.protocol !== 'https:' || !url.pathname.startsWith('/folder/')) {
      throw new UserError('HTTP_DS_URL', `${displayUrl(url)} is not a datastore URL`, 'use https://VCENTER/folder/<vm>/<disk>.vmdk?dcPath=<datacenter>&dsName=<datastore>');
    }
    const own = !o.dispatcher;
    const d = o.dispatcher ?? pinnedPool(url.origin, o.trust, o.connections ?? 4, o.timeoutMs ?? 60_000);
    const probe = new HttpDatastoreSource(url, 0, d, false, o);
    try {
      const name = decodeURIComponent(url.pathname.split('/').pop() ?? '');
      const refusal = checkDescriptor(name, undefined);
      if (refusal) throw refusal;
      let flat = url;
      // A descriptor names its extents; a -flat URL may still have a descriptor beside it to check.
      const descUrl = /-flat\.vmdk$/i.test(name) ? withName(url, name.replace(/-flat\.vmdk$/i, '.vmdk')) : url;
      const desc = await probe.fetchSmall(descUrl, 64 * 1024);
      if (desc !== undefined && /^#\s*Disk DescriptorFile/m.test(desc)) {
        const parsed = parseDescriptor(desc);
        const bad = checkDescriptor(name, parsed);
        if (bad) throw bad;
        if (descUrl === url) flat = withName(url, parsed.extents[0]!.file);
      } else if (descUrl === url) {
        throw new UserError('HTTP_DS_NOT_A_DESCRIPTOR', `${displayUrl(url)} is not a VMDK descriptor`, 'give the disk descriptor (vm.vmdk) or its flat extent (vm-flat.vmdk)');
      }
      const flatProbe = flat === url ? probe : new HttpDatastoreSource(flat, 0, d, false, o);
      const size = await flatProbe.totalSize();
      const src = new HttpDatastoreSource(flat, size, d, own, o);
      src.log.info({ uri: src.uri, capacity: size }, 'http datastore disk opened');
      return retryingSource(src, o.retry, o.logger);
    } catch (e) {
      if (own) await d.close().catch(() => undefined);
      throw e instanceof HttpReadError ? toUserError(url, e) : e;
    }
  }

  protected async readAt(offset: number, length: number, target: Buffer | undefined): Promise<Buffer> {
    if (length === 0) return Buffer.alloc(0);
    return this.range(this.flatUrl, offset, length, target);
  }

  async close(): Promise<void> {
    if (this.ownDispatcher) await this.dispatcher.close().catch(() => undefined);
  }

  private headers(extra: Record<string, string>): Record<string, string> {
    const c = this.cookie();
    return c ? { ...extra, cookie: c } : extra;
  }

  /** Exactly [offset, offset+length) into a buffer sized up front; a 200 (Range ignored) is refused, not downloaded. */
  private async range(url: URL, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const sent = this.cookie();
    const res = await this.dispatcher.request({
      origin: url.origin, path: url.pathname + url.search, method: 'GET',
      headers: this.headers({ range: `bytes=${offset}-${offset + length - 1}` }),
      headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs,
    }).catch((e: unknown) => { throw new HttpReadError(`request failed: ${e instanceof Error ? e.message : String(e)}`, true, undefined, e); });
    if (res.statusCode !== 206) {
      await res.body.dump().catch(() => undefined);
      const e = statusError(res.statusCode, `Range GET of bytes ${offset}-${offset + length - 1}`);
      if ((res.statusCode === 401 || res.statusCode === 403) && this.refreshCookie) {
        this.log.info({ uri: this.uri, status: res.statusCode }, 'the datastore refused the session cookie; logging in again');
        await this.refreshCookie(sent).catch((err: unknown) => { throw new HttpReadError(`${e.message}; logging in again failed: ${err instanceof Error ? err.message : String(err)}`, true, res.statusCode, err); });
      }
      throw e;
    }
    const cr = String(res.headers['content-range'] ?? '');
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(cr);
    if (!m || Number(m[1]) !== offset || Number(m[2]) !== offset + length - 1) {
      await res.body.dump().catch(() => undefined);
      throw new HttpReadError(`the server answered range "${cr}" for bytes ${offset}-${offset + length - 1}`, false);
    }
    const out = into ?? Buffer.allocUnsafe(length);
    let at = 0;
    try {
      for await (const chunk of res.body as AsyncIterable<Buffer>) {
        if (at + chunk.length > length) throw new HttpReadError(`the server sent more than the ${length} bytes asked`, false);
        chunk.copy(out, at);
        at += chunk.length;
      }
    } catch (e) {
      if (e instanceof HttpReadError) throw e;
      throw new HttpReadError(`connection lost after ${at} of ${length} bytes: ${e instanceof Error ? e.message : String(e)}`, true, undefined, e);
    }
    if (at !== length) throw new HttpReadError(`short body: ${at} of ${length} bytes`, true);
    return out;
  }

  private async totalSize(): Promise<number> {
    return withRetry(async () => {
      const res = await this.dispatcher.request({
        origin: this.flatUrl.origin, path: this.flatUrl.pathname + this.flatUrl.search, method: 'GET',
        headers: this.headers({ range: 'bytes=0-0' }), headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs,
      }).catch((e: unknown) => { throw new HttpReadError(`request failed: ${e instanceof Error ? e.message : String(e)}`, true, undefined, e); });
      await res.body.dump().catch(() => undefined);
      if (res.statusCode !== 206) throw statusError(res.statusCode, 'size probe (Range bytes=0-0)');
      const m = /\/(\d+)$/.exec(String(res.headers['content-range'] ?? ''));
      if (!m) throw new HttpReadError('the server did not report the file size in Content-Range', false);
      return Number(m[1]);
    }, this.retry, this.log, 'http size probe');
  }

  /** The body of a small file, or undefined when it does not exist. */
  private async fetchSmall(url: URL, limit: number): Promise<string | undefined> {
    const res = await this.dispatcher.request({
      origin: url.origin, path: url.pathname + url.search, method: 'GET',
      headers: this.headers({ range: `bytes=0-${limit - 1}` }), headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs,
    }).catch((e: unknown) => { throw new HttpReadError(`request failed: ${e instanceof Error ? e.message : String(e)}`, true, undefined, e); });
    if (res.statusCode === 404) { await res.body.dump().catch(() => undefined); return undefined; }
    if (res.statusCode === 416) { await res.body.dump().catch(() => undefined); return ''; } // an empty file
    if (res.statusCode !== 200 && res.statusCode !== 206) { await res.body.dump().catch(() => undefined); throw statusError(res.statusCode, `GET ${displayUrl(url)}`); }
    const parts: Buffer[] = [];
    let n = 0;
    // A server that ignores Range could send a whole disk here: stop reading past the limit.
    for await (const c of res.body as AsyncIterable<Buffer>) {
      if (n >= limit) continue;
      parts.push(c);
      n += c.length;
    }
    return Buffer.concat(parts).subarray(0, limit).toString('latin1');
  }
}

function statusError(status: number, what: string): HttpReadError {
  if (status === 401 || status === 403) return new HttpReadError(`${what}: HTTP ${status}, the session cookie was refused (expired or missing)`, true, status);
  if (status === 404) return new HttpReadError(`${what}: HTTP 404, no such file on the datastore`, false, status);
  if (status === 200) return new HttpReadError(`${what}: the server ignored the Range header (HTTP 200)`, false, status);
  if (status === 416) return new HttpReadError(`${what}: HTTP 416, range not satisfiable`, false, status);
  return new HttpReadError(`${what}: HTTP ${status}`, status >= 500 || status === 429, status);
}

function toUserError(url: URL, e: HttpReadError): UserError {
  const where = displayUrl(url);
  if (e.status === 401 || e.status === 403) return new UserError('HTTP_DS_AUTH', `${where}: ${e.message}`, 'log in to vCenter again (vmlift vc login) and retry; datastore access needs a live session cookie');
  if (e.status === 404) return new UserError('HTTP_DS_NOT_FOUND', `${where}: ${e.message}`, 'check the disk path, datacenter (dcPath) and datastore (dsName)');
  return new UserError('HTTP_DS_OPEN', `${where}: ${e.message}`, 'check that the vCenter/ESXi host is reachable on 443 and that the thumbprint is right', { cause: e });
}

function withName(u: URL, name: string): URL {
  const n = new URL(u.toString());
  const parts = n.pathname.split('/');
  parts[parts.length - 1] = encodeURIComponent(name);
  n.pathname = parts.join('/');
  return n;
}

function displayUrl(u: URL): string {
  const c = new URL(u.toString());
  c.username = '';
  c.password = '';
  return c.toString();
}

/** An undici pool to one origin that checks the server certificate's SHA-256 (or CA) before any request leaves. */
function pinnedPool(origin: string, trust: HttpTrust, connections: number, timeoutMs: number): Pool {
  if ('ca' in trust) return new Pool(origin, { connections, connect: { ca: trust.ca, timeout: timeoutMs }, pipelining: 1 });
  const base = buildConnector({ rejectUnauthorized: false, timeout: timeoutMs, maxCachedSessions: 0 });
  if ('insecure' in trust) return new Pool(origin, { connections, connect: base });
  const want = trust.thumbprint.replace(/:/g, '').toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(want)) {
    throw new UserError('HTTP_DS_THUMBPRINT', `"${trust.thumbprint}" is not a SHA-256 thumbprint`, 'give the 64 hex digits (colons allowed) of the server certificate\'s SHA-256 fingerprint');
  }
  const connect: buildConnector.connector = (opts, cb) => {
    base(opts, (err, socket) => {
      if (err) return cb(err, null);
      const got = (socket as TLSSocket).getPeerCertificate().fingerprint256?.replace(/:/g, '').toUpperCase();
      if (got !== want) {
        socket!.destroy();
        return cb(new UserError('HTTP_DS_THUMBPRINT', `the certificate of ${opts.hostname} has SHA-256 ${got ?? '(none)'}, not the pinned ${trust.thumbprint}`,
          'check the vCenter thumbprint; it changes when the certificate is renewed'), null);
      }
      cb(null, socket!);
    });
  };
  return new Pool(origin, { connections, connect });
}
