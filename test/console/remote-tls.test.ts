/**
 * Issue 15, remote access: `connector serve --listen HOST:PORT` serves the same API and console to
 * other machines over TLS only, with the connector's own certificate (the one agents pin). Refusals
 * are the same as on loopback, the session cookie is also `Secure`, the Origin check expects https,
 * plain HTTP gets no answer, and a one-time link names the TLS address.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { ConnectorApi } from '../../src/engine/api.ts';
import { JobEngine } from '../../src/engine/jobs.ts';
import { Workgroups } from '../../src/engine/workgroups.ts';
import { EngineMetrics } from '../../src/engine/metrics.ts';
import { openStateStore } from '../../src/state/sqlite.ts';
import { loadOrCreateAgentTls } from '../../src/engine/agent-tls.ts';
import { silentLogger } from '../../src/util/log.ts';
import { vmlift } from '../vsphere/helpers.ts';

const TOKEN = 'tkn-remote-0123456789abcdefghijk';

interface Answer { status: number; headers: Record<string, string | string[] | undefined>; body: string; fingerprint: string }

/** An HTTPS request that trusts only the connector's certificate (pinned: its PEM is the only CA, its SHA-256 compared). */
function call(port: number, cert: string, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers, ca: cert, checkServerIdentity: () => undefined }, (res) => {
      const fingerprint = (res.socket as TLSSocket).getPeerCertificate().fingerprint256.replace(/:/g, '').toLowerCase();
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({
        status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8'), fingerprint,
      }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

test('connector --listen: the API and console over TLS with the connector\'s certificate; same refusals, Secure cookie, https origin, no plain HTTP', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-console-tls-'));
  const state = openStateStore(join(dir, 'state.db'));
  const engine = new JobEngine({ state, connect: () => Promise.reject(new Error('no cycles in this test')), logger: silentLogger });
  const api = new ConnectorApi({ engine, workgroups: new Workgroups(engine), metrics: new EngineMetrics(state), logger: silentLogger, token: TOKEN,
    resolveVm: async (n) => ({ vmRef: `vm-${n}`, name: n }) });
  await api.listen(0);
  const tls = await loadOrCreateAgentTls(join(dir, 'agent-tls'));
  const { port } = await api.listenTls(0, '127.0.0.1', tls);
  t.after(async () => { await api.close(); state.close(); rmSync(dir, { recursive: true, force: true }); });
  const origin = `https://127.0.0.1:${port}`;

  const anon = await call(port, tls.cert, 'GET', '/v1/jobs');
  assert.equal(anon.status, 401, 'no session, no token: refused over TLS too');
  assert.equal(anon.fingerprint, tls.fingerprint, 'the connector\'s own certificate');

  const login = await call(port, tls.cert, 'POST', '/v1/session', { origin }, JSON.stringify({ token: TOKEN }));
  assert.equal(login.status, 200, login.body);
  const setCookie = String(login.headers['set-cookie'] ?? '');
  assert.match(setCookie, /; HttpOnly; SameSite=Strict; Max-Age=43200; Secure$/, 'the cookie is Secure on the TLS listener');
  const cookie = setCookie.split(';')[0]!;
  const { csrf } = JSON.parse(login.body) as { csrf: string };

  assert.equal((await call(port, tls.cert, 'GET', '/v1/jobs', { cookie })).status, 200, 'a session reads');
  const fromHttp = await call(port, tls.cert, 'POST', '/v1/jobs/x/sync', { cookie, 'x-vmlift-csrf': csrf, origin: `http://127.0.0.1:${port}` });
  assert.equal(fromHttp.status, 403, 'an http origin is another origin for the TLS listener');
  const own = await call(port, tls.cert, 'POST', '/v1/jobs/x/sync', { cookie, 'x-vmlift-csrf': csrf, origin });
  assert.equal(own.status, 404, `the own https origin passes the checks and reaches the route (no job x): ${own.body}`);
  assert.equal((await call(port, tls.cert, 'GET', '/console/')).status, 200, 'the page is served over TLS');

  const link = await call(port, tls.cert, 'POST', '/v1/session/links', { authorization: `Bearer ${TOKEN}` });
  const links = JSON.parse(link.body) as { url: string; remoteUrl: string };
  assert.match(links.remoteUrl, new RegExp(`^https://127\\.0\\.0\\.1:${port}/console/#link=`), 'a one-time link names the TLS address');
  const byLink = await call(port, tls.cert, 'POST', '/v1/session', { origin }, JSON.stringify({ link: links.remoteUrl.split('#link=')[1] }));
  assert.equal(byLink.status, 200, 'the link logs in over TLS');

  // Plain HTTP to the TLS port: the TLS server answers no HTTP at all.
  const plain = await new Promise<string>((resolve) => {
    const s = connect(port, '127.0.0.1', () => s.write('GET /v1/jobs HTTP/1.1\r\nhost: x\r\n\r\n'));
    let got = '';
    s.on('data', (d) => { got += d.toString('latin1'); });
    s.on('close', () => resolve(got));
    s.on('error', () => resolve(got));
  });
  assert.doesNotMatch(plain, /^HTTP\/1\.1 /, 'no HTTP answer without TLS');

  // The same suites as every vmlift port: AEAD with forward secrecy; a TLS 1.2 CBC client is refused.
  const suite = (o: ConnectionOptions) => new Promise<string>((resolve) => {
    const s = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false, maxVersion: 'TLSv1.2', ...o });
    s.once('secureConnect', () => { resolve(s.getCipher().name); s.destroy(); });
    s.once('error', (e) => { resolve(`refused: ${e.message}`); s.destroy(); });
  });
  assert.equal(await suite({ ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' }), 'ECDHE-ECDSA-AES128-GCM-SHA256');
  assert.match(await suite({ ciphers: 'ECDHE-ECDSA-AES128-SHA256' }), /^refused: /, 'TLS 1.2 CBC');
});

test('connector serve --listen refuses an address that is not HOST:PORT before anything starts', async () => {
  const home = mkdtempSync(join(tmpdir(), 'vmlift-console-listen-'));
  try {
    const r = await vmlift(['connector', 'serve', '--home', home, '--listen', 'nowhere']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /--listen "nowhere" is not HOST:PORT/);
    assert.match(r.stderr, /fix: give an address and a port, e\.g\. --listen 0\.0\.0\.0:8443/);
  } finally {
    rmSync(home, { recursive: true, force: true });
  }
});
