import net from 'node:net';
import tls from 'node:tls';
import { UserError } from '../util/errors.ts';
import { CLIENT_TLS } from './tls-suites.ts';

/** "AB:CD:..." or "abcd..." → 64 lowercase hex chars; throws a UserError on anything else. */
export function normalizeFingerprint(fp: string): string {
  const hex = fp.trim().replace(/^sha256[:=]/i, '').replace(/:/g, '').toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) {
    throw new UserError('BAD_FINGERPRINT', `"${fp}" is not a SHA-256 certificate fingerprint (64 hex digits, colons optional)`,
      'copy the fingerprint printed by `vmlift receiver info --data-dir DIR` on the receiver');
  }
  return hex;
}

/** 64 hex chars → "AB:CD:…" as printed to users. */
export function formatFingerprint(hex: string): string {
  return hex.toUpperCase().match(/../g)!.join(':');
}

export interface ProxySpec { host: string; port: number; user?: string; password?: string }

/** Parse `http://[user[:pass]@]host:port`; `password` (from a file or env) overrides one in the URL. */
export function parseProxy(url: string, password?: string): ProxySpec {
  let u: URL;
  try { u = new URL(url); } catch {
    throw new UserError('BAD_PROXY', `proxy "${redactUrl(url)}" is not a URL`, 'use --proxy http://[user@]host:port');
  }
  if (u.protocol !== 'http:' || !u.hostname) {
    throw new UserError('BAD_PROXY', `proxy "${redactUrl(url)}" must be an http:// URL with a host`, 'use --proxy http://[user@]host:port');
  }
  const spec: ProxySpec = { host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port ? Number(u.port) : 3128 };
  if (u.username) spec.user = decodeURIComponent(u.username);
  const pw = password ?? (u.password ? decodeURIComponent(u.password) : undefined);
  if (pw !== undefined) spec.password = pw;
  return spec;
}

export function redactUrl(url: string): string {
  return url.replace(/\/\/([^@/]*)@/, (_m, cred: string) => `//${cred.split(':')[0]}:***@`);
}

/** Transient network errors: worth a reconnect; a UserError for whoever finally gives up. */
export class ConnectError extends UserError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('RECEIVER_UNREACHABLE', message, 'check that the receiver runs (`vmlift receiver serve`), the host and ports, and any firewall or proxy in between', { ...options, transient: true });
  }
}

function tunnel(proxy: ProxySpec, host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: proxy.host, port: proxy.port });
    const fail = (e: Error) => { s.destroy(); reject(e); };
    s.setTimeout(timeoutMs, () => fail(new ConnectError(`proxy ${proxy.host}:${proxy.port} did not answer within ${timeoutMs} ms`)));
    s.once('error', (e) => fail(new ConnectError(`cannot reach proxy ${proxy.host}:${proxy.port}: ${e.message}`, { cause: e })));
    const target = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    // A proxy whose upstream is down may just close: without this the promise never settled (no
    // timer is left on a closed socket), and a process waiting on it exited 13.
    const onClose = (): void => fail(new ConnectError(`proxy ${proxy.host}:${proxy.port} closed the connection without answering CONNECT to ${target}`));
    s.once('close', onClose);
    s.once('connect', () => {
      let req = `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n`;
      if (proxy.user !== undefined) {
        req += `Proxy-Authorization: Basic ${Buffer.from(`${proxy.user}:${proxy.password ?? ''}`).toString('base64')}\r\n`;
      }
      s.write(`${req}\r\n`);
    });
    let buf = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) {
        if (buf.length > 16384) fail(new ConnectError('proxy sent an oversized response to CONNECT'));
        return;
      }
      s.off('data', onData);
      s.setTimeout(0);
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(buf.subarray(0, end).toString('latin1'));
      const code = status ? Number(status[1]) : 0;
      s.off('close', onClose);
      if (code === 200) {
        const rest = buf.subarray(end + 4);
        if (rest.length) s.unshift(rest);
        s.removeAllListeners('error');
        resolve(s);
      } else if (code === 502 || code === 503 || code === 504) {
        // the proxy could not reach the receiver (down, restarting): as transient as a refused connection
        s.destroy();
        reject(new ConnectError(`proxy ${proxy.host}:${proxy.port} could not reach ${target} (status ${code})`));
      } else if (code === 407) {
        s.destroy();
        reject(new UserError('PROXY_AUTH', `proxy ${proxy.host}:${proxy.port} refused the credentials (407)`,
          'give the proxy user in --proxy http://user@host:port and its password with --proxy-password-file or VMLIFT_PROXY_PASSWORD'));
      } else {
        s.destroy();
        reject(new UserError('PROXY_REFUSED', `proxy ${proxy.host}:${proxy.port} refused CONNECT to ${target} (status ${code || 'unreadable'})`,
          'allow CONNECT to the receiver\'s control and data ports on the proxy'));
      }
    };
    s.on('data', onData);
  });
}

export interface PinnedConnectOptions {
  host: string;
  port: number;
  /** Normalized (64 hex) SHA-256 of the receiver certificate. */
  fingerprint: string;
  proxy?: ProxySpec | undefined;
  timeoutMs?: number;
  /** The command that accepts `presented` (formatted) as the new pin, named in FINGERPRINT_MISMATCH's fix. */
  acceptPin?: ((presented: string) => string) | undefined;
}

/** The sender's fix for a certificate that is not the pinned one: accept a rotation on purpose, never silently. */
export function fingerprintMismatchFix(presented: string, acceptPin?: (presented: string) => string): string {
  const accept = acceptPin ? acceptPin(presented) : `run the same command again with --fingerprint ${presented}`;
  return `if the receiver's certificate was replaced on purpose (\`vmlift receiver rotate-cert\`; compare with \`vmlift receiver info --data-dir DIR\` on the receiver), accept the new one: ${accept}; `
    + 'if it was not, something between you and the receiver is intercepting the connection: do not accept it';
}

/**
 * TLS connection whose peer certificate must have the pinned SHA-256 fingerprint. Nothing is written
 * on the socket before the check passed. Resolves with a connected, verified socket.
 */
export async function connectPinned(o: PinnedConnectOptions): Promise<tls.TLSSocket> {
  const timeoutMs = o.timeoutMs ?? 15000;
  const raw = o.proxy ? await tunnel(o.proxy, o.host, o.port, timeoutMs) : undefined;
  return new Promise((resolve, reject) => {
    const s = tls.connect({
      ...(raw ? { socket: raw } : { host: o.host, port: o.port }),
      servername: net.isIP(o.host) ? '' : o.host,
      rejectUnauthorized: false, // self-signed: trust comes from the pinned fingerprint below
      ...CLIENT_TLS,
    });
    const timer = setTimeout(() => { s.destroy(); reject(new ConnectError(`receiver ${o.host}:${o.port} did not complete TLS within ${timeoutMs} ms (timeout connectMs)`)); }, timeoutMs);
    s.once('error', (e) => { clearTimeout(timer); reject(new ConnectError(`cannot connect to receiver ${o.host}:${o.port}: ${e.message}`, { cause: e })); });
    s.once('secureConnect', () => {
      clearTimeout(timer);
      const cert = s.getPeerCertificate();
      const got = cert?.fingerprint256 ? normalizeFingerprint(cert.fingerprint256) : '';
      if (got !== o.fingerprint) {
        s.destroy();
        reject(new UserError('FINGERPRINT_MISMATCH',
          `receiver ${o.host}:${o.port} presented certificate fingerprint ${got ? formatFingerprint(got) : '(none)'}, but ${formatFingerprint(o.fingerprint)} is pinned; nothing was sent`,
          got ? fingerprintMismatchFix(formatFingerprint(got), o.acceptPin) : 'check that HOST:PORT is the vmlift receiver'));
        return;
      }
      s.removeAllListeners('error');
      resolve(s);
    });
  });
}

/** "host", "host:port", "[v6]:port" → host and port. */
export function parseHostPort(s: string, defaultPort: number): { host: string; port: number } {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(s) ?? /^([^:]+)(?::(\d+))?$/.exec(s);
  if (!m) {
    if (net.isIPv6(s)) return { host: s, port: defaultPort };
    throw new UserError('BAD_RECEIVER', `receiver "${s}" is not host[:port]`, 'use --receiver HOST or HOST:PORT');
  }
  const port = m[2] ? Number(m[2]) : defaultPort;
  if (!(port > 0 && port < 65536)) throw new UserError('BAD_RECEIVER', `port in "${s}" is outside 1..65535`, 'use --receiver HOST:PORT');
  return { host: m[1]!, port };
}
