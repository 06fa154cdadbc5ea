import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { isIP, type Socket } from 'node:net';
import { Agent, buildConnector } from 'undici';
import { UserError } from '../util/errors.ts';

/** How the server certificate is trusted: a pinned SHA-1/SHA-256 thumbprint, the system CAs, or nothing (--insecure). */
export type TrustMode = { thumbprint: string } | { systemCa: true } | { insecure: true };

/** Normalizes "aa:bb:…", "AABB…" or "sha256:…" to upper-case hex without separators. */
export function normalizeThumbprint(t: string): string {
  const hex = t.trim().replace(/^sha(1|256)[:=]/i, '').replace(/[:\s-]/g, '').toUpperCase();
  if (!/^[0-9A-F]+$/.test(hex) || (hex.length !== 40 && hex.length !== 64)) {
    throw new UserError('VC_THUMBPRINT_FORMAT', `"${t}" is not a certificate thumbprint`,
      'give the SHA-1 (40 hex digits) or SHA-256 (64 hex digits) thumbprint of the vCenter certificate, with or without colons');
  }
  return hex;
}

export function formatThumbprint(hex: string): string {
  return hex.match(/../g)!.join(':');
}

/** Thumbprint check done on the live socket, before a single byte of the request (cookie, password) goes out. */
export function checkPeer(socket: TLSSocket, expected: string, host: string): UserError | null {
  const cert = socket.getPeerCertificate();
  const actual = expected.length === 40 ? cert.fingerprint : cert.fingerprint256;
  const norm = (actual ?? '').replace(/:/g, '').toUpperCase();
  if (norm === expected) return null;
  return new UserError('VC_THUMBPRINT', `the certificate of ${host} does not match the pinned thumbprint ` +
    `(expected ${formatThumbprint(expected)}, the server presented SHA-256 ${cert.fingerprint256 ?? 'none'})`,
    'check that --thumbprint belongs to this vCenter (it changes when the certificate is renewed); ' +
    'read it from the vCenter appliance or with `openssl s_client -connect HOST:443 | openssl x509 -fingerprint -sha256`');
}

/** An undici dispatcher that enforces the trust mode on every new connection. */
export function makeDispatcher(trust: TrustMode, timeoutMs: number): Agent {
  if ('systemCa' in trust) {
    return new Agent({ connect: { timeout: timeoutMs }, headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
  }
  // No TLS session resumption: a resumed session carries no peer certificate to check.
  const base = buildConnector({ rejectUnauthorized: false, timeout: timeoutMs, maxCachedSessions: 0 });
  if ('insecure' in trust) {
    return new Agent({ connect: base, headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
  }
  const expected = normalizeThumbprint(trust.thumbprint);
  const connect: buildConnector.connector = (opts, cb) => {
    base(opts, (err, socket) => {
      if (err) return cb(err, null);
      const e = checkPeer(socket as TLSSocket, expected, opts.hostname);
      if (e) {
        (socket as Socket).destroy();
        return cb(e, null);
      }
      cb(null, socket!);
    });
  };
  return new Agent({ connect, headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
}

/** Reads the server's certificate thumbprints (for `vmlift vc` error hints and lab checks). */
export function fetchThumbprints(host: string, port: number, timeoutMs = 5000): Promise<{ sha1: string; sha256: string }> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host, port, rejectUnauthorized: false, ...(isIP(host) ? {} : { servername: host }) }, () => {
      const c = s.getPeerCertificate();
      s.destroy();
      resolve({ sha1: c.fingerprint, sha256: c.fingerprint256 });
    });
    s.setTimeout(timeoutMs, () => { s.destroy(); reject(new Error('timeout')); });
    s.on('error', reject);
  });
}
