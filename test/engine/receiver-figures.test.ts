/**
 * Issue 15: the connector API's `GET /v1/receivers` (what the console's overview and
 * `vmlift connector receivers` show) asks each receiver it knows for its space and dedup ratio over
 * TLS, as the connector's own source (registered with the activation code on first use), and reports
 * one that does not answer with RECEIVER_UNREACHABLE and its fix, without hiding the other. The CLI
 * prints it from the running connector's API and exits 1 when a receiver is unreachable.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { ConnectorApi } from '../../src/engine/api.ts';
import { JobEngine } from '../../src/engine/jobs.ts';
import { Workgroups } from '../../src/engine/workgroups.ts';
import { EngineMetrics } from '../../src/engine/metrics.ts';
import { openStateStore } from '../../src/state/sqlite.ts';
import { silentLogger } from '../../src/util/log.ts';
import { askReceivers, FIGURES_SOURCE_ID, type ReceiverFiguresResponse } from '../../src/engine/receiver-figures.ts';
import { freePort, sendDisk, startTestReceiver } from '../transfer/helpers.ts';
import { vmlift } from '../vsphere/helpers.ts';

const TOKEN = 'tkn-receivers-0123456789abcdefgh';
const MiB = 1 << 20;

test('GET /v1/receivers: the receiver\'s free space, stored bytes and dedup ratio; an unreachable one with RECEIVER_UNREACHABLE and its fix; `vmlift connector receivers`', { timeout: 120_000 }, async (t) => {
  const rx = await startTestReceiver();
  const home = mkdtempSync(join(tmpdir(), 'vmlift-receivers-'));
  const state = openStateStore(join(home, 'state.db'));
  const engine = new JobEngine({ state, connect: () => Promise.reject(new Error('no cycles in this test')), logger: silentLogger });
  const dead = `127.0.0.1:${await freePort()}`;
  const live = `127.0.0.1:${rx.rx.controlPort}`;
  const credentialsDir = join(home, 'credentials');
  const api = new ConnectorApi({ engine, workgroups: new Workgroups(engine), metrics: new EngineMetrics(state), logger: silentLogger, token: TOKEN,
    resolveVm: async (n) => ({ vmRef: `vm-${n}`, name: n }),
    receivers: () => askReceivers([
      { address: live, fingerprint: rx.rx.fingerprint, credentialsDir, activationCode: rx.code },
      { address: dead, fingerprint: rx.rx.fingerprint, credentialsDir, activationCode: rx.code },
    ]) });
  const { port } = await api.listen(0);
  t.after(async () => { await api.close(); state.close(); await rx.close(); rmSync(home, { recursive: true, force: true }); });

  // two images of the same 4 MiB: ratio 2
  const data = randomBytes(4 * MiB);
  for (const src of ['rcv-a', 'rcv-b']) {
    const s = await rx.sender(src);
    const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: data.length }] });
    await sendDisk(c, 0, data);
    await c.commit();
    await s.close();
  }

  const url = `http://127.0.0.1:${port}/v1/receivers`;
  assert.equal((await fetch(url)).status, 401, 'no token, no session: refused');
  const res = await fetch(url, { headers: { authorization: `Bearer ${TOKEN}` } });
  assert.equal(res.status, 200);
  const body = await res.json() as ReceiverFiguresResponse;
  assert.equal(body.receivers.length, 2);
  const [a, b] = body.receivers;
  assert.ok(a && a.reachable, JSON.stringify(a));
  assert.equal(a.address, live);
  assert.equal(a.figures.images, 2);
  assert.equal(a.figures.logicalBytes, 2 * data.length);
  assert.equal(a.figures.distinctBytes, data.length);
  assert.ok(Math.abs(a.figures.dedupRatio - 2) < 0.01, String(a.figures.dedupRatio));
  assert.ok(a.figures.freeBytes > 0 && a.figures.freeBytes <= a.figures.totalBytes);
  assert.ok(existsSync(join(credentialsDir, `${FIGURES_SOURCE_ID}.json`)), 'the connector registered its own source for the figures');
  assert.ok(b && !b.reachable, JSON.stringify(b));
  assert.equal(b.address, dead);
  assert.equal(b.error.code, 'RECEIVER_UNREACHABLE');
  assert.match(b.error.message, new RegExp(dead.replace(/\./g, '\\.')), 'the message names the receiver');
  assert.match(b.error.fix ?? '', /vmlift receiver serve/);

  // the CLI reads it from the running connector's API
  writeFileSync(join(home, 'api.json'), JSON.stringify({ port, pid: process.pid }));
  writeFileSync(join(home, 'api-token'), `${TOKEN}\n`, { mode: 0o600 });
  const json = await vmlift(['connector', 'receivers', '--home', home, '--json']);
  assert.equal(json.code, 1, `exit 1: one receiver is unreachable\n${json.stderr}`);
  const printed = JSON.parse(json.stdout) as ReceiverFiguresResponse;
  assert.deepEqual(printed.receivers.map((r) => [r.address, r.reachable]), [[live, true], [dead, false]]);
  const text = await vmlift(['connector', 'receivers', '--home', home]);
  assert.match(text.stdout, /dedup ratio 2\.00/);
  assert.match(text.stdout, new RegExp(`${dead.replace(/\./g, '\\.')}: unreachable \\(RECEIVER_UNREACHABLE\\)`));
  assert.match(text.stdout, /fix: .*vmlift receiver serve/);
});
