/** Who may use the connector's local API: a bearer token compared in constant time, on loopback only. */
import { isIP } from 'node:net';
import { UserError } from '../util/errors.ts';

export { tokenMatches } from '../util/bearer-token.ts';

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

/**
 * The address the API listens on. It speaks plain HTTP with a bearer token, so only loopback
 * (127.0.0.0/8, ::1, localhost) is allowed; anything else is refused rather than exposing the token.
 */
export function apiListenHost(host: string | undefined): string {
  if (host === undefined) return '127.0.0.1';
  const h = host.trim().replace(/^\[|\]$/g, '');
  if (LOOPBACK.has(h) || (isIP(h) === 4 && h.startsWith('127.'))) return h;
  throw new UserError('API_NOT_LOOPBACK', `the connector API cannot listen on ${host}: it is plain HTTP with a bearer token, served on loopback only`,
    'keep the default 127.0.0.1 and run the CLI on the connector\'s machine, or reach it through an SSH tunnel (ssh -L 8090:127.0.0.1:8090 CONNECTOR)');
}
