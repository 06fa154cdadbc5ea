/**
 * Issue 15, the console's access to the API: login with the token or a one-time link, an HttpOnly
 * SameSite=Strict cookie, no request without a valid session or token, mutating requests refused
 * without the CSRF header or from another origin, sessions surviving a restart (same token), the
 * batch preview agreeing with the real batch for every job state, and the SSE stream.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConnectorApi } from '../../src/engine/api.ts';
import { JobEngine } from '../../src/engine/jobs.ts';
import { Workgroups } from '../../src/engine/workgroups.ts';
import { EngineMetrics } from '../../src/engine/metrics.ts';
import { openStateStore } from '../../src/state/sqlite.ts';
import { resolveSettings } from '../../src/engine/settings.ts';
import { JOB_STATES, type StateStore } from '../../src/state/types.ts';
import { silentLogger } from '../../src/util/log.ts';
import { ConsoleAuth } from '../../src/console/session-auth.ts';

const TOKEN = 'tkn-console-0123456789abcdefghij';

async function startApi(state: StateStore, token = TOKEN) {
  const engine = new JobEngine({ state, connect: () => Promise.reject(new Error('no cycles in this test')), logger: silentLogger });
  const api = new ConnectorApi({ engine, workgroups: new Workgroups(engine), metrics: new EngineMetrics(state), logger: silentLogger, token,
    resolveVm: async (n) => ({ vmRef: `vm-${n}`, name: n }) });
  const addr = await api.listen(0);
  return { api, engine, base: `http://127.0.0.1:${addr.port}` };
}

test('console sessions: login, cookie flags, refusals without session, CSRF and origin checks, one-time links, logout, restart', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-console-api-'));
  const state = openStateStore(join(dir, 'state.db'));
  let { api, base } = await startApi(state);
  t.after(async () => { await api.close(); state.close(); rmSync(dir, { recursive: true, force: true }); });

  // Without a session or token: refused, data and events alike.
  for (const path of ['/v1/jobs', '/v1/events', '/v1/session', '/v1/inventory']) {
    const r = await fetch(`${base}${path}`);
    assert.equal(r.status, 401, path);
    assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'UNAUTHORIZED');
  }
  // A forged cookie is no session.
  assert.equal((await fetch(`${base}/v1/jobs`, { headers: { cookie: 'vmlift_session=v1.zzzzzzzz.abc.def' } })).status, 401);

  const bad = await fetch(`${base}/v1/session`, { method: 'POST', body: JSON.stringify({ token: 'wrong' }) });
  assert.equal(bad.status, 401);
  assert.equal(bad.headers.get('set-cookie'), null);

  const login = await fetch(`${base}/v1/session`, { method: 'POST', body: JSON.stringify({ token: TOKEN }) });
  assert.equal(login.status, 200);
  const setCookie = login.headers.get('set-cookie') ?? '';
  assert.match(setCookie, /^vmlift_session=[^;]+; Path=\/; HttpOnly; SameSite=Strict; Max-Age=43200$/);
  const cookie = setCookie.split(';')[0]!;
  const { csrf } = await login.json() as { csrf: string };
  assert.ok(csrf.length >= 20);

  assert.equal((await fetch(`${base}/v1/jobs`, { headers: { cookie } })).status, 200, 'a session reads');
  const session = await (await fetch(`${base}/v1/session`, { headers: { cookie } })).json() as { csrf: string; via: string };
  assert.deepEqual([session.via, session.csrf], ['session', csrf], 'the page gets its CSRF token back after a reload');

  const put = (headers: Record<string, string>) => fetch(`${base}/v1/templates/nightly`, { method: 'PUT', headers: { cookie, ...headers }, body: JSON.stringify({ interval: '1d' }) });
  const noCsrf = await put({});
  assert.equal(noCsrf.status, 403);
  assert.equal(((await noCsrf.json()) as { error: { code: string } }).error.code, 'CSRF');
  assert.equal((await put({ 'x-vmlift-csrf': 'x'.repeat(32) })).status, 403, 'a wrong CSRF token');
  assert.equal((await put({ 'x-vmlift-csrf': csrf, origin: 'http://evil.example' })).status, 403, 'another origin');
  assert.equal((await put({ 'x-vmlift-csrf': csrf, origin: base })).status, 200, 'same origin with the CSRF token');
  assert.equal(state.listTemplates().length, 1);

  // A one-time link (what `vmlift connector console-url` asks for with the token): works once.
  const link = await (await fetch(`${base}/v1/session/links`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } })).json() as { url: string };
  assert.match(link.url, new RegExp(`^${base}/console/#link=[A-Za-z0-9_-]{32}$`));
  const code = link.url.split('#link=')[1];
  assert.equal((await fetch(`${base}/v1/session`, { method: 'POST', body: JSON.stringify({ link: code }) })).status, 200);
  const again = await fetch(`${base}/v1/session`, { method: 'POST', body: JSON.stringify({ link: code }) });
  assert.equal(again.status, 401, 'a link logs in once');
  assert.match(((await again.json()) as { error: { fix: string } }).error.fix, /console-url/);

  // The session survives a connector restart with the same token, and dies with another token.
  await api.close();
  ({ api, base } = await startApi(state));
  assert.equal((await fetch(`${base}/v1/jobs`, { headers: { cookie } })).status, 200, 'session valid after a restart');
  const out = await fetch(`${base}/v1/session`, { method: 'DELETE', headers: { cookie, 'x-vmlift-csrf': csrf } });
  assert.match(out.headers.get('set-cookie') ?? '', /Max-Age=0/);
  assert.equal((await fetch(`${base}/v1/jobs`, { headers: { cookie } })).status, 401, 'logged out');
  await api.close();
  ({ api, base } = await startApi(state, 'another-token-0123456789'));
  const other = new ConsoleAuth(TOKEN).login({ token: TOKEN })!;
  assert.equal((await fetch(`${base}/v1/jobs`, { headers: { cookie: `vmlift_session=${other.session}` } })).status, 401, 'a new token ends old sessions');

  // The page itself is served without a session (it holds no data) with a strict CSP, or says how to build it.
  const page = await fetch(`${base}/console/`);
  assert.ok(page.status === 200 || page.status === 503, String(page.status));
  if (page.status === 200) assert.match(page.headers.get('content-security-policy') ?? '', /default-src 'none'; script-src 'self'/);
  else assert.match(await page.text(), /fix: run scripts\/setup\.sh/);
  assert.equal((await fetch(`${base}/console/..%2f..%2fstate.db`)).status, 404);
});

test('workgroup preview: for every job state and action, the same members refused with the same reasons as the batch', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-console-preview-'));
  const state = openStateStore(join(dir, 'state.db'));
  const { api, base } = await startApi(state);
  t.after(async () => { await api.close(); state.close(); rmSync(dir, { recursive: true, force: true }); });
  const h = { authorization: `Bearer ${TOKEN}` };
  const call = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const r = await fetch(`${base}${path}`, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
    return await r.json() as T;
  };
  for (const action of ['start', 'sync', 'pause', 'resume', 'complete']) {
    const wg = `wg-${action}`;
    await call('POST', '/v1/workgroups', { id: wg });
    const ids: string[] = [];
    for (const s of JOB_STATES) {
      const id = `${action}-${s}`;
      state.createJob({ id, name: id, kind: 'vm', vmRef: `vm-${id}`, sourceId: id, settings: resolveSettings(undefined, {}) });
      if (s !== 'created') state.updateJob(id, { state: s, resumeState: s === 'paused' ? 'waiting' : null });
      ids.push(id);
    }
    await call('POST', `/v1/workgroups/${wg}/add`, { jobs: ids });
    const preview = await call<{ jobId: string; ok: boolean; reason?: string }[]>('POST', `/v1/workgroups/${wg}/preview`, { action });
    const done = await call<{ jobId: string; ok: boolean; reason?: string }[]>('POST', `/v1/workgroups/${wg}/${action}`);
    assert.deepEqual(preview.map((m) => [m.jobId, m.ok, m.reason]), done.map((m) => [m.jobId, m.ok, m.reason]), action);
    assert.ok(preview.some((m) => !m.ok) || action === 'resume', `${action} refuses some state`);
  }
});

test('GET /v1/events: a jobs event at once, another when a job changes', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-console-sse-'));
  const state = openStateStore(join(dir, 'state.db'));
  const { api, base } = await startApi(state);
  const ac = new AbortController();
  t.after(async () => { ac.abort(); await api.close(); state.close(); rmSync(dir, { recursive: true, force: true }); });
  state.createJob({ id: 'a', name: 'a', kind: 'vm', vmRef: 'vm-1', sourceId: 'a', settings: resolveSettings(undefined, {}) });
  const r = await fetch(`${base}/v1/events`, { headers: { authorization: `Bearer ${TOKEN}` }, signal: ac.signal });
  assert.equal(r.headers.get('content-type'), 'text/event-stream');
  const reader = r.body!.getReader();
  let text = '';
  const events = async (n: number) => {
    while ((text.match(/event: jobs\n/g) ?? []).length < n) text += new TextDecoder().decode((await reader.read()).value);
    return text.split('event: jobs\ndata: ').slice(1).map((x) => JSON.parse(x.split('\n')[0]!) as { jobs: { id: string; state: string }[]; summary: { byState: Record<string, number> } });
  };
  const [first] = await events(1);
  assert.deepEqual(first!.jobs.map((j) => [j.id, j.state]), [['a', 'created']]);
  assert.equal(first!.summary.byState.created, 1);
  state.updateJob('a', { state: 'paused', resumeState: 'created' });
  const [, second] = await events(2);
  assert.equal(second!.jobs[0]!.state, 'paused');
});

test('GET /v1/jobs/ID/drills/DRILL/screenshot: the PNG the connector kept with the drill; 404 with a fix otherwise', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-console-shot-'));
  const state = openStateStore(join(dir, 'state.db'));
  const { api, base } = await startApi(state);
  t.after(async () => { await api.close(); state.close(); rmSync(dir, { recursive: true, force: true }); });
  state.createJob({ id: 'web', name: 'web', kind: 'vm', vmRef: 'vm-1', sourceId: 'web', settings: resolveSettings(undefined, {}) });
  const png = Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), randomBytes(64)]);
  mkdirSync(join(dir, 'd1'));
  writeFileSync(join(dir, 'd1', 'console.png'), png);
  state.addDrill({ id: 'd1', jobId: 'web', imageId: '1', state: 'passed', requestedAt: new Date().toISOString(), report: {} });
  state.updateDrill('d1', { reportDir: join(dir, 'd1'), verdict: 'passed', endedAt: new Date().toISOString() });
  state.addDrill({ id: 'd2', jobId: 'web', imageId: '1', state: 'running', requestedAt: new Date().toISOString(), report: {} });
  const h = { authorization: `Bearer ${TOKEN}` };
  assert.equal((await fetch(`${base}/v1/jobs/web/drills/d1/screenshot`)).status, 401, 'no session, no screenshot');
  const r = await fetch(`${base}/v1/jobs/web/drills/d1/screenshot`, { headers: h });
  assert.equal(r.headers.get('content-type'), 'image/png');
  assert.deepEqual(Buffer.from(await r.arrayBuffer()), png);
  for (const [path, code] of [['/v1/jobs/web/drills/d2/screenshot', 'NO_SCREENSHOT'], ['/v1/jobs/web/drills/nope/screenshot', 'NO_DRILL']] as const) {
    const x = await fetch(`${base}${path}`, { headers: h });
    const body = await x.json() as { error: { code: string; fix?: string } };
    assert.equal(body.error.code, code);
    assert.ok(body.error.fix);
  }
});
