/**
 * CPU of one tick of the live event stream (engine/live-events.ts: every job, its live status and its
 * last cycles, serialised) over a real SQLite state of N jobs with C committed cycles each, in this
 * process (no cycle runs, so every job's finished cycles are as the stream last saw them).
 *   node --import tsx bench/live-events-build.ts [--jobs 200] [--cycles 30] [--ticks 30]
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { JobEngine } from '../src/engine/jobs.ts';
import { LiveEvents } from '../src/engine/live-events.ts';
import { openStateStore } from '../src/state/sqlite.ts';
import { resolveSettings } from '../src/engine/settings.ts';
import { silentLogger } from '../src/util/log.ts';

const { values } = parseArgs({ options: { jobs: { type: 'string', default: '200' }, cycles: { type: 'string', default: '30' }, ticks: { type: 'string', default: '30' } } });
const JOBS = Number(values.jobs), CYCLES = Number(values.cycles), TICKS = Number(values.ticks);
const dir = mkdtempSync(join(tmpdir(), 'vmlift-bench-live-'));
const state = openStateStore(join(dir, 'state.db'));
try {
  for (let i = 0; i < JOBS; i++) {
    const id = `job-${i}`;
    state.createJob({ id, name: id, kind: 'vm', vmRef: `vm-${i}`, sourceId: id, settings: resolveSettings(undefined, {}) });
    for (let c = 0; c < CYCLES; c++) {
      const cid = `c${i}-${c}`;
      state.startCycle({ id: cid, jobId: id, kind: c ? 'incremental' : 'full', reason: null, snapshotName: null });
      state.updateCycle(cid, { wireBytes: 1 << 20, sourceBytesRead: 1 << 20, changedBytes: 1 << 20 });
      state.commitCycle(cid, String(c + 1), []);
    }
  }
  const engine = new JobEngine({ state, connect: () => Promise.reject(new Error('no cycles here')), logger: silentLogger });
  // build() is the tick's work; private, so reached through a cast (this is a measurement, not a use).
  const events = new LiveEvents(engine) as unknown as { build(): string };
  for (let i = 0; i < 5; i++) events.build();
  const c0 = process.cpuUsage();
  let bytes = 0;
  for (let i = 0; i < TICKS; i++) bytes = events.build().length;
  const c = process.cpuUsage(c0);
  const ms = (c.user + c.system) / 1000 / TICKS;
  console.log(`live event tick, ${JOBS} jobs x ${CYCLES} cycles: ${ms.toFixed(2)} ms of CPU (${(ms / 10).toFixed(2)} % of a core at one tick a second), ${(bytes / 1024).toFixed(1)} KiB`);
} finally {
  state.close();
  rmSync(dir, { recursive: true, force: true });
}
