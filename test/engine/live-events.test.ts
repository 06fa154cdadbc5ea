/**
 * The live event stream keeps each job's finished-cycle summary between ticks: it must still show a
 * cycle that ended (last cycle, bytes sent today) as soon as the job's record changes with it, as the
 * engine does when a cycle commits or fails.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, request } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JobEngine } from '../../src/engine/jobs.ts';
import { LiveEvents, type JobsEvent } from '../../src/engine/live-events.ts';
import { openStateStore } from '../../src/state/sqlite.ts';
import { resolveSettings } from '../../src/engine/settings.ts';
import { silentLogger } from '../../src/util/log.ts';

test('live events: a cycle that ends shows as the last cycle and in bytes today at the next tick', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-live-'));
  const state = openStateStore(join(dir, 'state.db'));
  const engine = new JobEngine({ state, connect: () => Promise.reject(new Error('no cycles here')), logger: silentLogger });
  const events = new LiveEvents(engine, 50);
  const server = createServer((req, res) => events.open(req, res));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const got: JobsEvent[] = [];
  const req = request({ host: '127.0.0.1', port: (server.address() as { port: number }).port, path: '/' }, (res) => {
    let buf = '';
    res.on('data', (b: Buffer) => {
      buf += b;
      for (let i; (i = buf.indexOf('\n\n')) >= 0; buf = buf.slice(i + 2)) {
        const data = /^data: (.*)$/m.exec(buf.slice(0, i))?.[1];
        if (data) got.push(JSON.parse(data) as JobsEvent);
      }
    });
  });
  req.end();
  t.after(() => { req.destroy(); events.close(); server.close(); state.close(); rmSync(dir, { recursive: true, force: true }); });
  const until = async (pred: (e: JobsEvent) => boolean, what: string) => {
    for (let i = 0; i < 100; i++) { const e = got.at(-1); if (e && pred(e)) return e; await new Promise((r) => setTimeout(r, 20)); }
    throw new Error(`no event with ${what}: ${JSON.stringify(got.at(-1))}`);
  };

  state.createJob({ id: 'j1', name: 'j1', kind: 'vm', vmRef: 'vm-1', sourceId: 'j1', settings: resolveSettings(undefined, {}) });
  await until((e) => e.jobs.length === 1 && e.jobs[0]!.lastCycle === null && e.summary.bytesToday === 0, 'the job and no cycle');
  state.startCycle({ id: 'c1', jobId: 'j1', kind: 'full', reason: null, snapshotName: null });
  state.updateCycle('c1', { wireBytes: 5000, sourceBytesRead: 5000, changedBytes: 5000 });
  state.commitCycle('c1', '1', []);
  state.updateJob('j1', { state: 'waiting', nextSyncAt: new Date(Date.now() + 3600_000).toISOString() });
  const e = await until((x) => x.jobs[0]!.lastCycle !== null, 'the committed cycle');
  assert.deepEqual({ kind: e.jobs[0]!.lastCycle!.kind, state: e.jobs[0]!.lastCycle!.state, wire: e.jobs[0]!.lastCycle!.wireBytes }, { kind: 'full', state: 'committed', wire: 5000 });
  assert.equal(e.summary.bytesToday, 5000);
  assert.equal(e.summary.byState.waiting, 1);

  // a job added shows at the next tick
  state.createJob({ id: 'j2', name: 'j2', kind: 'vm', vmRef: 'vm-2', sourceId: 'j2', settings: resolveSettings(undefined, {}) });
  await until((x) => x.jobs.length === 2, 'two jobs');
});
