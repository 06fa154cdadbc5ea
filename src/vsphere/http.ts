import type { Agent, Dispatcher } from 'undici';
import { request } from 'undici';
import type { IHttpClient } from 'soap';
import { UserError } from '../util/errors.ts';
import { badResponse } from './errors.ts';
import { depthOver, MAX_XML_DEPTH } from './lean-xml.ts';

/** Counters of the SOAP transport: round trips are what the inventory benchmark reports. */
export interface TransportStats { roundTrips: number; bytesSent: number; bytesReceived: number }

/** What one SOAP answer may be; the size default is well above vCenter's largest answers (docs/vsphere.md, Measured). */
export interface SoapLimits {
  /** Bytes of one answer body; larger answers are refused while they stream in. */
  maxResponseBytes: number;
  /** Whole round trip, headers and body, ms (undici's timeouts only bound the silence between packets). */
  deadlineMs: number;
  /** Element nesting of an answer node-soap parses (lean-xml has its own, the same by default). */
  maxDepth: number;
}

export const DEFAULT_MAX_RESPONSE_BYTES = 256 << 20;

/** The limits for a session whose per-packet timeout is `timeoutMs`; VMLIFT_VC_MAX_RESPONSE_MIB overrides the size cap. */
export function soapLimits(timeoutMs: number, o: Partial<SoapLimits> = {}): SoapLimits {
  const env = Number(process.env.VMLIFT_VC_MAX_RESPONSE_MIB);
  const fromEnv = Number.isFinite(env) && env > 0 ? Math.floor(env * (1 << 20)) : undefined;
  return {
    maxResponseBytes: o.maxResponseBytes ?? fromEnv ?? DEFAULT_MAX_RESPONSE_BYTES,
    deadlineMs: o.deadlineMs ?? Math.max(10 * timeoutMs, 60_000),
    maxDepth: o.maxDepth ?? MAX_XML_DEPTH,
  };
}

const XML_TYPE = /^\s*(?:text\/xml|application\/(?:soap\+)?xml)\s*(?:;|$)/i;
/** A DTD (and with it entity declarations, billion laughs and external entities): SOAP forbids them, nothing expands them here. */
const DTD = /<!(?:DOCTYPE|ENTITY)/i;

/**
 * Reads an answer body up to `limits.maxResponseBytes`, as text; refuses a larger one without
 * holding more than the cap (plus one socket read) and stops the transfer.
 */
export async function readBody(res: Dispatcher.ResponseData, server: string, limits: SoapLimits): Promise<string> {
  const max = limits.maxResponseBytes;
  const declared = Number(res.headers['content-length']);
  const tooBig = (n: string) => badResponse(server, `the answer is larger than the limit of ${max} bytes (${n}); ` +
    'vmlift stopped reading it');
  if (Number.isFinite(declared) && declared > max) {
    res.body.destroy();
    throw tooBig(`Content-Length ${declared}`);
  }
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of res.body as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > max) {
      res.body.destroy();
      throw tooBig(`more than ${n} bytes sent`);
    }
    chunks.push(c);
  }
  return Buffer.concat(chunks, n).toString('utf8');
}

/** Refuses an answer that is not XML or carries a DTD; `status` 200 answers must say they are XML. */
export function checkXml(server: string, status: number, headers: Record<string, unknown>, text: string): void {
  const ct = headers['content-type'];
  const type = Array.isArray(ct) ? String(ct[0]) : ct === undefined ? '' : String(ct);
  if (status === 200 && !XML_TYPE.test(type)) {
    throw badResponse(server, `HTTP 200 with content-type "${type || '(none)'}", not XML (${JSON.stringify(text.slice(0, 60))}…)`);
  }
  if (DTD.test(text)) throw badResponse(server, 'it contains a DTD (<!DOCTYPE or <!ENTITY), which SOAP forbids; entities are never expanded');
}

/** A request aborted by the deadline, as the clear error (others unchanged). */
export function deadlineError(e: unknown, server: string, limits: SoapLimits): unknown {
  const name = (e as { name?: string })?.name;
  if (name === 'TimeoutError' || (name === 'AbortError' && /timeout/i.test(String((e as { cause?: unknown }).cause ?? '')))) {
    return new UserError('VC_TIMEOUT', `${server} did not complete its answer within ${limits.deadlineMs} ms`,
      'check the vCenter load and the network path; a server that trickles its answer is cut off at this deadline', { cause: e, transient: true });
  }
  return e;
}

/**
 * node-soap's HTTP hook on undici: one keep-alive pool with the pinned-TLS connector, the
 * vCenter session cookie attached to every call and refreshed from Set-Cookie.
 */
export class UndiciSoapHttp implements IHttpClient {
  cookie: string | undefined;
  readonly stats: TransportStats = { roundTrips: 0, bytesSent: 0, bytesReceived: 0 };
  constructor(private readonly dispatcher: Agent, private readonly timeoutMs: number, readonly limits: SoapLimits = soapLimits(timeoutMs)) {}

  request(rurl: string, data: any, callback: (error: any, res?: any, body?: any) => any, exheaders?: Record<string, any>): any {
    const p = this.post(rurl, typeof data === 'string' ? data : String(data), exheaders)
      .then((response) => {
        // node-soap's parser keeps a frame per open element: refuse deep nesting before it sees it.
        const d = depthOver(response.data, this.limits.maxDepth);
        if (d !== undefined) throw badResponse(origin(rurl), `elements nest deeper than ${this.limits.maxDepth} levels (at offset ${d})`);
        return response;
      })
      .then((response) => { callback(null, response, response.data); return response; }, (err) => { callback(err); });
    return p as any;
  }

  /** One SOAP POST (counted, with the session cookie); the answer's status and text. */
  async post(rurl: string, body: string, exheaders?: Record<string, any>): Promise<{ status: number; statusCode: number; headers: Record<string, unknown>; data: string }> {
    const headers: Record<string, string> = { 'content-type': 'text/xml; charset=utf-8' };
    for (const [k, v] of Object.entries(exheaders ?? {})) if (v !== undefined) headers[k.toLowerCase()] = String(v);
    if (this.cookie) headers.cookie = this.cookie;
    this.stats.roundTrips++;
    this.stats.bytesSent += Buffer.byteLength(body);
    const server = origin(rurl);
    let res, text;
    try {
      res = await request(rurl, { method: 'POST', headers, body, dispatcher: this.dispatcher,
        headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs, signal: AbortSignal.timeout(this.limits.deadlineMs) });
      text = await readBody(res, server, this.limits);
    } catch (e) {
      throw deadlineError(e, server, this.limits);
    }
    this.stats.bytesReceived += Buffer.byteLength(text);
    checkXml(server, res.statusCode, res.headers, text);
    const sc = res.headers['set-cookie'];
    const first = Array.isArray(sc) ? sc[0] : sc;
    if (first && /^vmware_soap_session=/.test(first)) this.cookie = first.split(';')[0];
    return { status: res.statusCode, statusCode: res.statusCode, headers: res.headers, data: text };
  }
}

function origin(u: string): string {
  try { return new URL(u).host; } catch { return u; }
}
