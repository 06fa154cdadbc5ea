/**
 * Issue 15: GET /v1/events carries each job's newest drill (state, the step under way, the steps done
 * with their durations, the verdict), and a drill moving to its next step sends an event: the console's
 * job page follows a drill from the stream alone (test/console/drill-browser.test.ts does it with a real drill).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConnectorApi } from '../../src/engine/api.ts';
import { JobEngine } from '../../src/engine/jobs.ts';
import { Workgroups } from '../../src/engine/workgroups.ts';
import { EngineMetrics } from '../../src/engine/metrics.ts';
import { openStateStore } from '../../src/state/sqlite.ts';
import { resolveSettings } from '../../src/engine/settings.ts';
import { silentLogger } from '../../src/util/log.ts';
import type { LiveDrill } from '../../src/engine/live-events.ts';

const TOKEN = 'tkn-console-drill-events-0123456789';

test('GET /v1/events: the newest drill of each job, its step under way and steps done; an event when it moves on', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-console-drill-sse-'));
  const state = openStateStore(join(dir, 'state.db'));
  const engine = new JobEngine({ state, connect: () => Promise.reject(new Error('no cycles in this test')), logger: silentLogger });
  const api = new ConnectorApi({ engine, workgroups: new Workgroups(engine), metrics: new EngineMetrics(state), logger: silentLogger, token: TOKEN,
    resolveVm: async (n) => ({ vmRef: `vm-${n}`, name: n }) });
  const { port } = await api.listen(0);
  const ac = new AbortController();
  t.after(async () => { ac.abort(); await api.close(); state.close(); rmSync(dir, { recursive: true, force: true }); });
  for (const id of ['a', 'b']) state.createJob({ id, name: id, kind: 'vm', vmRef: `vm-${id}`, sourceId: id, settings: resolveSettings(undefined, {}) });
  const at = '2026-12-01T10:00:00.000Z';
  state.addDrill({ id: 'd-old', jobId: 'a', imageId: '1', state: 'abnormal', requestedAt: '2026-12-01T09:00:00.000Z', report: {} });
  state.addDrill({ id: 'd1', jobId: 'a', imageId: '2', state: 'running', requestedAt: at,
    report: { state: 'running', startedAt: at, steps: [{ step: 'inspect', ok: true, seconds: 41.5, message: 'kvm: needs conversion' }], current: { step: 'convert', startedAt: at } } });

  const r = await fetch(`http://127.0.0.1:${port}/v1/events`, { headers: { authorization: `Bearer ${TOKEN}` }, signal: ac.signal });
  const reader = r.body!.getReader();
  let text = '';
  const events = async (n: number) => {
    while ((text.match(/event: jobs\n/g) ?? []).length < n) text += new TextDecoder().decode((await reader.read()).value);
    return text.split('event: jobs\ndata: ').slice(1).map((x) => JSON.parse(x.split('\n')[0]!) as { jobs: { id: string; drill: LiveDrill | null }[] });
  };
  const [first] = await events(1);
  const drill = (ev: typeof first, id: string) => ev!.jobs.find((j) => j.id === id)!.drill;
  assert.deepEqual(drill(first, 'a'), { id: 'd1', state: 'running', verdict: null, current: { step: 'convert', startedAt: at }, steps: [{ step: 'inspect', ok: true, seconds: 41.5 }] },
    'the newest drill, with the step under way and the steps done');
  assert.equal(drill(first, 'b'), null, 'a job without drills');

  // The convert ends: the steps grow, nothing is under way until the boot starts.
  state.updateDrill('d1', { report: { state: 'running', startedAt: at, steps: [{ step: 'inspect', ok: true, seconds: 41.5 }, { step: 'convert', ok: true, seconds: 250 }] } });
  const [, second] = await events(2);
  assert.deepEqual([drill(second, 'a')!.current, drill(second, 'a')!.steps.map((s) => s.step)], [null, ['inspect', 'convert']]);

  // An ended drill shows no step under way even if its last report still named one.
  state.updateDrill('d1', { state: 'passed', verdict: 'drill passed', endedAt: new Date().toISOString(),
    report: { state: 'passed', steps: [], current: { step: 'boot', startedAt: at } } });
  const [, , third] = await events(3);
  assert.deepEqual([drill(third, 'a')!.state, drill(third, 'a')!.verdict, drill(third, 'a')!.current], ['passed', 'drill passed', null]);
});
