/**
 * Issue 12 §5, the connector's local API: no request without its token (none, a wrong one of the same
 * length, of another length, another scheme), the token compared in constant time (the compare
 * function hashes both sides before timingSafeEqual, so equal-length and other-length inputs take one
 * path), loopback by default, and any other listen address refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiListenHost, tokenMatches } from '../../src/engine/api-access.ts';
import { ConnectorApi } from '../../src/engine/api.ts';
import { JobEngine } from '../../src/engine/jobs.ts';
import { Workgroups } from '../../src/engine/workgroups.ts';
import { EngineMetrics } from '../../src/engine/metrics.ts';
import { openStateStore } from '../../src/state/sqlite.ts';
import { silentLogger } from '../../src/util/log.ts';
import { UserError } from '../../src/util/errors.ts';
import { vmlift } from '../vsphere/helpers.ts';

const TOKEN = 'tkn-0123456789abcdefghijABCDEFGHIJ';

test('tokenMatches: only the exact bearer token, whatever the length of a wrong one', () => {
  assert.equal(tokenMatches(`Bearer ${TOKEN}`, TOKEN), true);
  const sameLength = `${TOKEN.slice(0, -1)}${TOKEN.endsWith('J') ? 'K' : 'J'}`;
  assert.equal(sameLength.length, TOKEN.length);
  for (const bad of [undefined, '', 'Bearer ', `Bearer ${sameLength}`, `Bearer ${TOKEN.slice(0, -1)}`, `Bearer ${TOKEN}x`, `bearer ${TOKEN}`,
    `Basic ${TOKEN}`, TOKEN, `Bearer  ${TOKEN}`, `Bearer ${TOKEN.repeat(100)}`]) {
    assert.equal(tokenMatches(bad, TOKEN), false, String(bad));
  }
  // an empty configured token never matches, not even an empty one
  assert.equal(tokenMatches('Bearer ', ''), false);
});

test('apiListenHost: loopback by default, loopback addresses allowed, anything else refused with the fix', () => {
  assert.equal(apiListenHost(undefined), '127.0.0.1');
  for (const h of ['127.0.0.1', '127.0.0.2', '::1', '[::1]', 'localhost']) assert.doesNotThrow(() => apiListenHost(h), h);
  for (const h of ['0.0.0.0', '::', '10.1.2.3', '192.168.0.1', 'connector.example.com', '::ffff:10.0.0.1']) {
    assert.throws(() => apiListenHost(h), (e: unknown) => e instanceof UserError && e.code === 'API_NOT_LOOPBACK'
      && e.message.includes(h) && /SSH tunnel/.test(e.fix ?? ''), h);
  }
});

test('the API over HTTP: 401 without the right token, loopback only, metrics open', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-api-'));
  const state = openStateStore(join(dir, 'state.db'));
  const engine = new JobEngine({ state, connect: () => Promise.reject(new Error('no jobs in this test')), logger: silentLogger });
  const api = new ConnectorApi({ engine, workgroups: new Workgroups(engine), metrics: new EngineMetrics(state), logger: silentLogger, token: TOKEN,
    resolveVm: () => Promise.reject(new Error('no vCenter in this test')) });
  t.after(async () => { await api.close(); state.close(); rmSync(dir, { recursive: true, force: true }); });
  const addr = await api.listen(0);
  assert.equal(addr.address, '127.0.0.1', 'binds loopback by default');
  await assert.rejects(new ConnectorApi({ engine, workgroups: new Workgroups(engine), metrics: new EngineMetrics(state), logger: silentLogger, token: TOKEN,
    resolveVm: () => Promise.reject(new Error('x')) }).listen(0, '0.0.0.0'), /API_NOT_LOOPBACK|cannot listen on 0\.0\.0\.0/);
  const url = `http://127.0.0.1:${addr.port}/v1/jobs`;
  const get = async (auth?: string) => {
    const r = await fetch(url, auth === undefined ? {} : { headers: { authorization: auth } });
    return { status: r.status, body: await r.json() as { error?: { code: string; fix: string } } };
  };
  for (const auth of [undefined, `Bearer ${TOKEN.replace(/.$/, '0')}`, 'Bearer short', `Bearer ${TOKEN}${TOKEN}`]) {
    const r = await get(auth);
    assert.equal(r.status, 401, String(auth));
    assert.equal(r.body.error?.code, 'UNAUTHORIZED');
    assert.match(r.body.error!.fix, /same --home as the connector/);
  }
  const ok = await get(`Bearer ${TOKEN}`);
  assert.equal(ok.status, 200);
  assert.deepEqual(ok.body, []);
  // writes are refused the same way, and create nothing
  const post = await fetch(url, { method: 'POST', body: JSON.stringify({ id: 'x', vm: 'vm-1' }) });
  assert.equal(post.status, 401);
  assert.deepEqual(state.listJobs(), []);
  assert.equal((await fetch(`http://127.0.0.1:${addr.port}/metrics`)).status, 200, 'Prometheus scrapes /metrics without the token');
});

test('`connector serve --api-listen` other than loopback is refused before anything starts', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-api-'));
  try {
    const r = await vmlift(['connector', 'serve', '--home', join(dir, 'home'), '--api-listen', '0.0.0.0', '--api-port', '0']);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /API_NOT_LOOPBACK|cannot listen on 0\.0\.0\.0: it is plain HTTP with a bearer token/);
    assert.match(r.stderr, /ssh -L 8090:127\.0\.0\.1:8090/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
