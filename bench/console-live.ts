/**
 * The console's cost in the connector: the API over a state of N jobs (default 200, each with 10
 * committed cycles), CPU and RSS of this process for a while with no one listening, then with a
 * browser-like SSE client on GET /v1/events, then the page's transfer (gzip) from /console/.
 *   node --import tsx bench/console-live.ts [jobs] [seconds]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'node:http';
import { ConnectorApi } from '../src/engine/api.ts';
import { JobEngine } from '../src/engine/jobs.ts';
import { Workgroups } from '../src/engine/workgroups.ts';
import { EngineMetrics } from '../src/engine/metrics.ts';
import { openStateStore } from '../src/state/sqlite.ts';
import { resolveSettings } from '../src/engine/settings.ts';
import { silentLogger } from '../src/util/log.ts';

const jobs = Number(process.argv[2]) || 200;
const seconds = Number(process.argv[3]) || 20;
const dir = mkdtempSync(join(tmpdir(), 'vmlift-bench-console-'));
const state = openStateStore(join(dir, 'state.db'));
for (let i = 0; i < jobs; i++) {
  const id = `job-${i}`;
  state.createJob({ id, name: id, kind: 'vm', vmRef: `vm-${i}`, sourceId: id, settings: resolveSettings(undefined, {}) });
  for (let c = 0; c < 10; c++) {
    const cid = `c${i}-${c}`;
    state.startCycle({ id: cid, jobId: id, kind: c ? 'incremental' : 'full', reason: null, snapshotName: null });
    state.updateCycle(cid, { wireBytes: 1 << 20, sourceBytesRead: 1 << 20, changedBytes: 1 << 20 });
    state.commitCycle(cid, String(c + 1), []);
  }
  state.updateJob(id, { state: 'waiting', nextSyncAt: new Date(Date.now() + 3600_000).toISOString() });
}
const engine = new JobEngine({ state, connect: () => Promise.reject(new Error('no cycles')), logger: silentLogger });
const token = 'bench-token-0123456789';
const api = new ConnectorApi({ engine, workgroups: new Workgroups(engine), metrics: new EngineMetrics(state), logger: silentLogger, token, resolveVm: () => Promise.reject(new Error('x')) });
const { port } = await api.listen(0);

async function measure(label: string): Promise<void> {
  const c0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await sleep(seconds * 1000);
  const c = process.cpuUsage(c0);
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(`${label}: CPU ${(((c.user + c.system) / 1e6 / wall) * 100).toFixed(2)} % of one core, RSS ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB`);
}

await measure(`${jobs} jobs, no console`);
let events = 0, bytes = 0;
const req = request({ host: '127.0.0.1', port, path: '/v1/events', headers: { authorization: `Bearer ${token}` } }, (res) => {
  res.on('data', (b: Buffer) => { bytes += b.length; events += (b.toString().match(/event: jobs/g) ?? []).length; });
});
req.end();
// Something changes every second (as while cycles run): one job's state flips, so every tick sends an event.
const flip = setInterval(() => { const j = state.getJob('job-0')!; state.updateJob('job-0', { state: j.state === 'waiting' ? 'paused' : 'waiting' }); }, 1000);
await measure(`${jobs} jobs, console open (SSE, an event each second)`);
clearInterval(flip);
console.log(`  ${events} events, ${(bytes / events / 1024).toFixed(1)} KiB each`);
req.destroy();

let transfer = 0;
const t0 = Date.now();
const index = await fetch(`http://127.0.0.1:${port}/console/`, { headers: { 'accept-encoding': 'gzip' } });
const html = await index.text();
transfer += Number(index.headers.get('content-length') ?? 0);
for (const m of html.matchAll(/(?:src|href)="(\/console\/assets\/[^"]+)"/g)) {
  const r = await fetch(`http://127.0.0.1:${port}${m[1]}`, { headers: { 'accept-encoding': 'gzip' } });
  await r.arrayBuffer();
  transfer += Number(r.headers.get('content-length') ?? 0);
}
console.log(`page transfer (gzip): ${(transfer / 1024).toFixed(1)} KiB in ${Date.now() - t0} ms (first, uncached)`);
await api.close();
state.close();
rmSync(dir, { recursive: true, force: true });
