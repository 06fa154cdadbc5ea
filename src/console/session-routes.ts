/**
 * The API's session routes (docs/console.md):
 *   POST   /v1/session        {token} or {link} → sets the HttpOnly SameSite=Strict cookie, answers the CSRF token
 *   GET    /v1/session        the caller's session and CSRF token (the page's cookie is HttpOnly)
 *   DELETE /v1/session        log out
 *   POST   /v1/session/links  a one-time login link (`vmlift connector console-url`)
 */
import type { IncomingMessage } from 'node:http';
import { ConsoleAuth, ownOrigin, overTls, type AuthResult } from './session-auth.ts';

type Send = (status: number, body: unknown, headers?: Record<string, string>) => void;

/** POST /v1/session, answered before any authorization (its body holds the token or link). */
export function handleLogin(auth: ConsoleAuth, req: IncomingMessage, body: Record<string, unknown>, send: Send): void {
  const origin = req.headers.origin;
  if (origin !== undefined && origin !== ownOrigin(req)) {
    send(403, { error: { code: 'CSRF', message: `login from another origin (${origin}) refused`, fix: 'open the console served by the connector itself' } });
    return;
  }
  const s = auth.login(body, overTls(req));
  if (!s) {
    send(401, { error: { code: 'LOGIN_FAILED', message: body.link ? 'this login link is unknown, used or expired' : 'wrong API token',
      fix: body.link ? 'print a new one with `vmlift connector console-url`' : 'paste the token from the connector home\'s api-token file' } });
    return;
  }
  send(200, { csrf: s.csrf, expiresAt: s.expiresAt }, { 'set-cookie': s.cookie });
}

/** The authorized session routes; false for other paths. */
export function handleSession(auth: ConsoleAuth, who: AuthResult & { ok: true }, req: IncomingMessage, path: string, send: Send, baseUrl: string, remoteBase?: string): boolean {
  if (path === '/v1/session' && req.method === 'GET') {
    const exp = who.session ? auth.expiry(who.session) : undefined;
    send(200, { via: who.via, ...(who.session ? { csrf: auth.csrfFor(who.session), expiresAt: new Date(exp!).toISOString() } : {}) });
    return true;
  }
  if (path === '/v1/session' && req.method === 'DELETE') {
    send(200, { loggedOut: true }, who.session ? { 'set-cookie': auth.logout(who.session, overTls(req)) } : {});
    return true;
  }
  if (path === '/v1/session/links' && req.method === 'POST') {
    const l = auth.createLink();
    send(200, { url: `${baseUrl}/console/#link=${l.code}`, ...(remoteBase ? { remoteUrl: `${remoteBase}/console/#link=${l.code}` } : {}), expiresAt: l.expiresAt });
    return true;
  }
  return false;
}

