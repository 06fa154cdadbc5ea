import type { Agent } from 'undici';
import { request } from 'undici';
import type { IHttpClient } from 'soap';

/** Counters of the SOAP transport: round trips are what the inventory benchmark reports. */
export interface TransportStats { roundTrips: number; bytesSent: number; bytesReceived: number }

/**
 * node-soap's HTTP hook on undici: one keep-alive pool with the pinned-TLS connector, the
 * vCenter session cookie attached to every call and refreshed from Set-Cookie.
 */
export class UndiciSoapHttp implements IHttpClient {
  cookie: string | undefined;
  readonly stats: TransportStats = { roundTrips: 0, bytesSent: 0, bytesReceived: 0 };
  constructor(private readonly dispatcher: Agent, private readonly timeoutMs: number) {}

  request(rurl: string, data: any, callback: (error: any, res?: any, body?: any) => any, exheaders?: Record<string, any>): any {
    const p = this.post(rurl, typeof data === 'string' ? data : String(data), exheaders)
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
    const res = await request(rurl, { method: 'POST', headers, body, dispatcher: this.dispatcher,
      headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs });
    const text = await res.body.text();
    this.stats.bytesReceived += Buffer.byteLength(text);
    const sc = res.headers['set-cookie'];
    const first = Array.isArray(sc) ? sc[0] : sc;
    if (first && /^vmware_soap_session=/.test(first)) this.cookie = first.split(';')[0];
    return { status: res.statusCode, statusCode: res.statusCode, headers: res.headers, data: text };
  }
}
