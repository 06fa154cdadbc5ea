/**
 * A minimal HTTP/1.1 client over one TLS socket, writing requests byte for byte as given (so paths
 * and headers may hold what Node's own client refuses to send) and reading answers by content-length
 * or chunked encoding; the socket is kept for the next request while the server keeps it open.
 */
import tls from 'node:tls';

export interface RawAnswer { status: number; headers: Record<string, string>; body: Buffer }

export function tlsConnect(port: number, timeoutMs = 20_000): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, minVersion: 'TLSv1.2' });
    s.setNoDelay(true);
    const t = setTimeout(() => { s.destroy(); reject(new Error('TLS connect timed out')); }, timeoutMs);
    s.once('secureConnect', () => { clearTimeout(t); s.removeAllListeners('error'); s.on('error', () => undefined); resolve(s); });
    s.once('error', (e) => { clearTimeout(t); reject(e); });
  });
}

export class RawHttp {
  private sock: tls.TLSSocket | null = null;
  private buf: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  private ended = false;
  constructor(private readonly port: number) {}

  async socket(): Promise<tls.TLSSocket> {
    if (this.sock && !this.ended && !this.sock.destroyed) return this.sock;
    const s = await tlsConnect(this.port);
    this.sock = s; this.buf = Buffer.alloc(0); this.ended = false;
    s.on('data', (d: Buffer) => { this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d; this.waiter?.(); });
    const end = (): void => { if (this.sock === s) { this.ended = true; this.waiter?.(); } };
    s.on('end', end); s.on('close', end);
    return s;
  }

  private async more(deadline: number): Promise<boolean> {
    if (this.ended) return false;
    const left = deadline - Date.now();
    if (left <= 0) throw new Error('timeout');
    await new Promise<void>((r) => { const t = setTimeout(r, left); this.waiter = () => { clearTimeout(t); this.waiter = null; r(); }; });
    return true;
  }

  /**
   * Send `head` (request line and headers, CRLF-terminated, blank line included) and `body`; resolve
   * the answer, or 'closed' when the server closed without one. Throws 'timeout'.
   */
  async request(head: string | Buffer, body?: Buffer, timeoutMs = 20_000): Promise<RawAnswer | 'closed'> {
    const s = await this.socket();
    const deadline = Date.now() + timeoutMs;
    const h = typeof head === 'string' ? Buffer.from(head, 'latin1') : head;
    s.write(body?.length ? Buffer.concat([h, body]) : h);
    let end: number;
    while ((end = this.buf.indexOf('\r\n\r\n')) < 0) {
      if (!(await this.more(deadline))) { this.close(); return 'closed'; }
    }
    const lines = this.buf.subarray(0, end).toString('latin1').split('\r\n');
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')?.[1] ?? 0);
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) { const i = l.indexOf(':'); if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim(); }
    this.buf = this.buf.subarray(end + 4);
    let out: Buffer;
    if (/^HEAD /.test(h.toString('latin1', 0, 5))) {
      out = Buffer.alloc(0);
    } else if (headers['content-length'] !== undefined) {
      const n = Number(headers['content-length']);
      while (this.buf.length < n) if (!(await this.more(deadline))) break;
      out = this.buf.subarray(0, n); this.buf = this.buf.subarray(n);
    } else if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
      const parts: Buffer[] = [];
      for (;;) {
        let e: number;
        while ((e = this.buf.indexOf('\r\n')) < 0) if (!(await this.more(deadline))) { this.close(); return { status, headers, body: Buffer.concat(parts) }; }
        const n = parseInt(this.buf.subarray(0, e).toString('latin1'), 16);
        while (this.buf.length < e + 2 + n + 2) if (!(await this.more(deadline))) { this.close(); return { status, headers, body: Buffer.concat(parts) }; }
        parts.push(this.buf.subarray(e + 2, e + 2 + n));
        this.buf = this.buf.subarray(e + 2 + n + 2);
        if (n === 0) break;
      }
      out = Buffer.concat(parts);
    } else if (status === 204 || status === 304) {
      out = Buffer.alloc(0);
    } else {
      while (await this.more(deadline)) { /* until close */ }
      out = this.buf; this.buf = Buffer.alloc(0);
    }
    if (/close/i.test(headers.connection ?? '')) this.close();
    return { status, headers, body: out };
  }

  close(): void { this.sock?.destroy(); this.sock = null; this.ended = true; }
}
