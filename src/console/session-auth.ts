/**
 * Who may use the connector API from a browser: a session cookie obtained with the API token or a
 * one-time link. Sessions are stateless (an expiry and a nonce under an HMAC keyed from the API
 * token), so they survive a connector restart and die when the token changes. Mutating requests
 * with a cookie need the session's CSRF token in `x-vmlift-csrf` and, when the browser sends one,
 * an Origin equal to the API's own; the cookie is also HttpOnly and SameSite=Strict.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { tokenMatches } from '../util/bearer-token.ts';

export const SESSION_COOKIE = 'vmlift_session';
export const CSRF_HEADER = 'x-vmlift-csrf';
const SESSION_SECONDS = 12 * 3600;
const LINK_SECONDS = 600;

export type AuthResult =
  | { ok: true; via: 'token' | 'session'; session?: string }
  | { ok: false; status: 401 | 403; code: string; message: string; fix: string };

function sameString(a: string, b: string): boolean {
  const x = createHash('sha256').update(a).digest();
  const y = createHash('sha256').update(b).digest();
  return timingSafeEqual(x, y);
}

export function readCookie(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
  }
  return undefined;
}

/** The origin a request reached the connector on: https on the TLS listener (`connector serve --listen`), else http. */
export function ownOrigin(req: IncomingMessage): string {
  return `${(req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http'}://${req.headers.host ?? ''}`;
}

/** Whether the request came over TLS: its cookie is then also `Secure`. */
export function overTls(req: IncomingMessage): boolean {
  return (req.socket as { encrypted?: boolean }).encrypted === true;
}

export class ConsoleAuth {
  private readonly key: Buffer;
  /** Sessions ended with logout before their expiry (a restart forgets them; they expire anyway). */
  private readonly revoked = new Map<string, number>();
  /** One-time login links: code → expiry (ms). */
  private readonly links = new Map<string, number>();

  constructor(private readonly token: string, private readonly now: () => number = Date.now) {
    this.key = createHmac('sha256', token).update('vmlift console session key').digest();
  }

  /** A new one-time login code (valid 10 minutes, once). */
  createLink(): { code: string; expiresAt: string } {
    this.prune();
    const code = randomBytes(24).toString('base64url');
    const exp = this.now() + LINK_SECONDS * 1000;
    this.links.set(code, exp);
    return { code, expiresAt: new Date(exp).toISOString() };
  }

  /** A session for the API token or an unused link code; undefined when neither is valid. */
  login(body: { token?: unknown; link?: unknown }, secure = false): { cookie: string; session: string; csrf: string; expiresAt: string } | undefined {
    let ok = false;
    if (typeof body.token === 'string' && body.token) ok = tokenMatches(`Bearer ${body.token}`, this.token);
    else if (typeof body.link === 'string' && body.link) {
      this.prune();
      for (const [code, exp] of this.links) {
        if (sameString(code, body.link) && exp > this.now()) { this.links.delete(code); ok = true; break; }
      }
    }
    if (!ok) return undefined;
    const exp = this.now() + SESSION_SECONDS * 1000;
    const payload = `v1.${exp.toString(36)}.${randomBytes(12).toString('base64url')}`;
    const session = `${payload}.${this.mac(payload)}`;
    return { session, cookie: this.cookie(session, SESSION_SECONDS, secure), csrf: this.csrfFor(session), expiresAt: new Date(exp).toISOString() };
  }

  logout(session: string, secure = false): string {
    const exp = this.expiry(session);
    if (exp) this.revoked.set(session, exp);
    return this.cookie('', 0, secure);
  }

  csrfFor(session: string): string {
    return createHmac('sha256', this.key).update(`csrf:${session}`).digest('base64url').slice(0, 32);
  }

  /** The session's expiry (ms) when it is genuine, unexpired and not logged out. */
  expiry(session: string | undefined): number | undefined {
    if (!session) return undefined;
    const m = /^(v1\.([0-9a-z]+)\.[A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$/.exec(session);
    if (!m || !sameString(this.mac(m[1]!), m[3]!)) return undefined;
    const exp = parseInt(m[2]!, 36);
    if (!(exp > this.now()) || this.revoked.has(session)) return undefined;
    return exp;
  }

  /** Bearer token (the CLI) or a session cookie (the console), with the CSRF checks for the latter. */
  authorize(req: IncomingMessage): AuthResult {
    if (tokenMatches(req.headers.authorization, this.token)) return { ok: true, via: 'token' };
    const session = readCookie(req, SESSION_COOKIE);
    if (!this.expiry(session)) {
      return { ok: false, status: 401, code: 'UNAUTHORIZED', message: session ? 'the console session has expired or is not valid' : 'missing or wrong connector API token',
        fix: session ? 'log in to the console again' : 'run the CLI with the same --home as the connector, or log in to the console' };
    }
    const method = req.method ?? 'GET';
    if (method !== 'GET' && method !== 'HEAD') {
      const origin = req.headers.origin;
      if (origin !== undefined && origin !== ownOrigin(req)) {
        return { ok: false, status: 403, code: 'CSRF', message: `request from another origin (${origin}) refused`, fix: 'use the console served by the connector itself' };
      }
      const given = req.headers[CSRF_HEADER];
      if (typeof given !== 'string' || !sameString(given, this.csrfFor(session!))) {
        return { ok: false, status: 403, code: 'CSRF', message: `a console request that changes something needs the session's ${CSRF_HEADER} header`, fix: 'reload the console page' };
      }
    }
    return { ok: true, via: 'session', session: session! };
  }

  private cookie(value: string, maxAge: number, secure: boolean): string {
    return `${SESSION_COOKIE}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAge}${secure ? '; Secure' : ''}`;
  }

  private mac(payload: string): string {
    return createHmac('sha256', this.key).update(payload).digest('base64url');
  }

  private prune(): void {
    const t = this.now();
    for (const [k, exp] of this.links) if (exp <= t) this.links.delete(k);
    for (const [k, exp] of this.revoked) if (exp <= t) this.revoked.delete(k);
  }
}
