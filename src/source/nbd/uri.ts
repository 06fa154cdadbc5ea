import { UserError } from '../../util/errors.ts';
import { DEFAULT_PORT } from './protocol.ts';

/** Where and how to reach one NBD export (libnbd's URI forms). */
export interface NbdTarget {
  /** TCP host, or undefined for a Unix socket. */
  host?: string;
  port: number;
  socketPath?: string;
  exportName: string;
  tls: boolean;
  /** libnbd's `tls-certificates=DIR`: ca-cert.pem (and client-cert.pem / client-key.pem) inside. */
  tlsCertificates?: string;
  /** The URI without credentials, for messages. */
  display: string;
}

export function isNbdUri(spec: string): boolean {
  return /^nbds?(\+unix)?:\/\//i.test(spec);
}

/**
 * nbd://host[:port]/export, nbds://host[:port]/export (TLS required),
 * nbd+unix:///export?socket=PATH, nbds+unix:///export?socket=PATH.
 */
export function parseNbdUri(spec: string): NbdTarget {
  const bad = (why: string): never => {
    throw new UserError('NBD_BAD_URI', `invalid NBD URI "${spec}": ${why}`,
      'use nbd://HOST[:PORT]/EXPORT, nbds://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH');
  };
  let url: URL;
  try { url = new URL(spec); } catch { return bad('not a URI'); }
  const scheme = url.protocol.replace(/:$/, '').toLowerCase();
  if (!['nbd', 'nbds', 'nbd+unix', 'nbds+unix'].includes(scheme)) bad(`unknown scheme "${scheme}"`);
  if (url.username || url.password) bad('credentials in NBD URIs are not supported (use TLS certificates)');
  const tls = scheme.startsWith('nbds');
  const unix = scheme.endsWith('+unix');
  // The export name is the path without its leading slash; it may be empty (the default export).
  let exportName: string;
  try { exportName = decodeURIComponent(url.pathname.replace(/^\//, '')); } catch { return bad('bad percent-encoding in the export name'); }
  if (Buffer.byteLength(exportName) > 4096) bad('export name longer than 4096 bytes');
  const q = url.searchParams;
  for (const k of q.keys()) {
    if (!['socket', 'tls-certificates'].includes(k)) bad(`unsupported query parameter "${k}"`);
  }
  const tlsCertificates = q.get('tls-certificates') ?? undefined;
  if (tlsCertificates && !tls) bad('tls-certificates needs an nbds:// URI');
  const display = `${scheme}://${url.host}${url.pathname}${unix ? `?socket=${q.get('socket') ?? ''}` : ''}`;
  if (unix) {
    if (url.host) bad('nbd+unix URIs take no host (nbd+unix:///EXPORT?socket=PATH)');
    const socketPath = q.get('socket');
    if (!socketPath) bad('nbd+unix needs ?socket=PATH');
    return { socketPath: socketPath!, port: 0, exportName, tls, tlsCertificates, display };
  }
  if (q.has('socket')) bad('socket= is only valid with nbd+unix://');
  if (!url.hostname) bad('missing host');
  const port = url.port ? Number(url.port) : DEFAULT_PORT;
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  return { host, port, exportName, tls, tlsCertificates, display };
}
