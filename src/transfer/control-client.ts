import http from 'node:http';
import { UserError } from '../util/errors.ts';
import { connectPinned, ConnectError, type ProxySpec } from './connect.ts';
import { HDR_SOURCE, type WireError } from './protocol.ts';
import { HDR_WIRE, WIRE_VERSION } from './wire-version.ts';
import { linkTimeouts, type LinkTimeouts } from './link-timeouts.ts';
import type {
  AbortCycleRequest, AbortCycleResponse, BeginCycleRequest, BeginCycleResponse, CommitCycleRequest, DeleteImageResponse,
  DigestsQuery, DisksResponse, DrillReport, DrillsResponse, ImagesResponse, RegisterRequest, RegisterResponse, StartDrillRequest, StoreFiguresResponse, WhoamiResponse,
} from './contract.ts';
import type { ImageInfo } from '../model/images.ts';

export interface ControlTarget {
  host: string; port: number; fingerprint: string; proxy?: ProxySpec | undefined;
  acceptPin?: ((presented: string) => string) | undefined;
  /** Silence limits (link-timeouts.ts); defaults when absent. */
  timeouts?: Partial<LinkTimeouts> | undefined;
}
export interface ControlAuth { sourceId: string; credential: string }

/** An error the receiver answered with; `code`, `fix` and `transient` as sent by the receiver. */
export class RemoteError extends UserError {
  readonly status: number;
  constructor(status: number, e: WireError) {
    super(e.code, `receiver refused: ${e.message}`, e.fix, { transient: e.transient === true });
    this.status = status;
  }
}

/**
 * HTTP+JSON client of the receiver's control API over a pinned TLS connection (optionally through
 * an HTTP CONNECT proxy). One connection per request keeps it simple and robust across receiver restarts.
 * One typed method per route (bodies in contract.ts); `request` and `stream` are the raw calls under them.
 */
export class ControlClient {
  private readonly timeouts: LinkTimeouts;
  constructor(private readonly target: ControlTarget, private auth: ControlAuth | null = null) {
    this.timeouts = linkTimeouts(target.timeouts);
  }

  setAuth(auth: ControlAuth): void { this.auth = auth; }

  private async open(method: string, path: string, body?: unknown, limit: 'requestMs' | 'commitMs' = 'requestMs'): Promise<http.IncomingMessage> {
    const idleMs = this.timeouts[limit];
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string> = { accept: 'application/json', connection: 'close', [HDR_WIRE]: String(WIRE_VERSION) };
    if (payload) { headers['content-type'] = 'application/json'; headers['content-length'] = String(payload.length); }
    if (this.auth) { headers[HDR_SOURCE] = this.auth.sourceId; headers.authorization = `Bearer ${this.auth.credential}`; }
    // the fingerprint is checked before a single byte (credential included) is written
    const sock = await connectPinned({ ...this.target, timeoutMs: this.timeouts.connectMs });
    // idle limit, not a deadline: a slow answer that keeps coming never trips it (a commit verifying a large disk has its own)
    sock.setTimeout(idleMs, () => sock.destroy(new Error(`the receiver sent nothing for ${idleMs} ms (timeout ${limit})`)));
    return new Promise((resolve, reject) => {
      const req = http.request({
        method, path, headers, host: this.target.host, port: this.target.port,
        createConnection: () => sock,
      });
      req.on('error', (e) => reject(e instanceof UserError ? e
        : new ConnectError(`control request ${method} ${path} failed: ${e.message}`, { cause: e })));
      req.on('response', resolve);
      req.end(payload);
    });
  }

  /** JSON request; non-2xx answers become RemoteError. */
  async request<T>(method: string, path: string, body?: unknown, limit?: 'requestMs' | 'commitMs'): Promise<T> {
    const res = await this.open(method, path, body, limit);
    const chunks: Buffer[] = [];
    try {
      for await (const c of res) chunks.push(c as Buffer);
    } catch (e) {
      throw new ConnectError(`control response to ${method} ${path} broke: ${(e as Error).message}`, { cause: e });
    }
    const text = Buffer.concat(chunks).toString('utf8');
    let json: unknown;
    try { json = text ? JSON.parse(text) : {}; } catch {
      throw new ConnectError(`receiver answered ${method} ${path} with non-JSON (status ${res.statusCode})`);
    }
    if ((res.statusCode ?? 500) >= 300) {
      const err = (json as { error?: WireError }).error ?? { code: 'HTTP', message: `status ${res.statusCode}` };
      if ((res.statusCode ?? 500) >= 500 && err.code === 'INTERNAL') throw new ConnectError(`receiver error on ${method} ${path}: ${err.message}`);
      throw new RemoteError(res.statusCode ?? 500, err);
    }
    return json as T;
  }

  /** Binary streaming GET (block digests). */
  async *stream(path: string): AsyncGenerator<Buffer> {
    const res = await this.open('GET', path);
    if ((res.statusCode ?? 500) >= 300) {
      const chunks: Buffer[] = [];
      for await (const c of res) chunks.push(c as Buffer);
      let err: WireError = { code: 'HTTP', message: `status ${res.statusCode}` };
      try { err = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { error: WireError }).error ?? err; } catch { /* keep generic */ }
      throw new RemoteError(res.statusCode ?? 500, err);
    }
    let complete = false;
    res.on('end', () => { complete = true; });
    for await (const c of res) yield c as Buffer;
    if (!complete || res.trailers['x-vmlift-complete'] === 'no') throw new ConnectError(`stream ${path} ended early`);
  }

  register(body: RegisterRequest): Promise<RegisterResponse> { return this.request('POST', '/v1/register', body); }
  whoami(): Promise<WhoamiResponse> { return this.request('GET', '/v1/whoami'); }
  images(): Promise<ImagesResponse> { return this.request('GET', '/v1/images'); }
  disks(): Promise<DisksResponse> { return this.request('GET', '/v1/disks'); }
  storeFigures(): Promise<StoreFiguresResponse> { return this.request('GET', '/v1/store'); }
  deleteImage(imageId: string): Promise<DeleteImageResponse> { return this.request('DELETE', `/v1/images/${encodeURIComponent(imageId)}`); }
  digests(imageId: string, q: DigestsQuery): AsyncGenerator<Buffer> {
    return this.stream(`/v1/images/${encodeURIComponent(imageId)}/digests?disk=${q.disk}&blockSize=${q.blockSize}`);
  }
  beginCycle(body: BeginCycleRequest): Promise<BeginCycleResponse> { return this.request('POST', '/v1/cycles', body); }
  commitCycle(cycleId: string, body: CommitCycleRequest): Promise<ImageInfo> {
    return this.request('POST', `/v1/cycles/${encodeURIComponent(cycleId)}/commit`, body, 'commitMs');
  }
  startDrill(body: StartDrillRequest): Promise<DrillReport> { return this.request('POST', '/v1/drills', body); }
  drills(): Promise<DrillsResponse> { return this.request('GET', '/v1/drills'); }
  drill(drillId: string): Promise<DrillReport> { return this.request('GET', `/v1/drills/${encodeURIComponent(drillId)}`); }
  async drillScreenshot(drillId: string): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const c of this.stream(`/v1/drills/${encodeURIComponent(drillId)}/screenshot`)) parts.push(c);
    return Buffer.concat(parts);
  }
  abortCycle(cycleId: string, body: AbortCycleRequest): Promise<AbortCycleResponse> {
    return this.request('POST', `/v1/cycles/${encodeURIComponent(cycleId)}/abort`, body);
  }
}
