import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cycleRates, forecastFinalSync, forecastLines } from '../../src/engine/final-sync-forecast.ts';
import { parseBandwidthWindows } from '../../src/engine/bandwidth-windows.ts';
import type { CycleRecord } from '../../src/state/types.ts';

const MB = 1e6;
const T0 = Date.parse('2026-12-01T10:00:00Z');
const iso = (s: number) => new Date(T0 + s * 1000).toISOString();

/** A committed cycle: snapshot at `snap` s, `seconds` long, `dataS` of it moving `changed` bytes. */
function cycle(seq: number, kind: CycleRecord['kind'], snap: number, seconds: number, dataS: number, changed: number, wire = changed): CycleRecord {
  return {
    id: `c${seq}`, jobId: 'j', seq, kind, state: 'committed', reason: null, snapshotName: `vmlift-c${seq}`, imageId: `${seq}`,
    startedAt: iso(snap - 0.5), endedAt: iso(snap - 0.5 + seconds), snapshotAt: iso(snap), dataMs: dataS * 1000,
    sourceBytesRead: changed, wireBytes: wire, changedBytes: changed, error: null,
  };
}

test('the forecast: fixed part + change rate × time since the last snapshot / throughput, from the newest cycles', () => {
  const cycles = [
    cycle(1, 'full', 0, 100, 90, 900 * MB),                 // full: 10 MB/s, not a change rate
    cycle(2, 'incremental', 3600, 12, 10, 100 * MB),        // 100 MB over 3600 s
    cycle(3, 'incremental', 7200, 22, 20, 200 * MB),        // 200 MB over 3600 s
    cycle(4, 'incremental', 10800, 32, 30, 300 * MB),       // 300 MB over 3600 s
  ];
  assert.deepEqual(cycleRates(cycles).map((r) => Math.round(r.bytesPerHour / MB)), [300, 200, 100], 'per cycle, newest first; the full is no rate');
  const r = forecastFinalSync(cycles, { bandwidthMbps: 0 }, new Date(T0 + (10800 + 1800) * 1000));
  assert.ok(r.available);
  const f = r.forecast;
  assert.equal(f.changeRatePerHour, 200 * MB, '600 MB over 3 h');
  assert.equal(f.sinceLastSnapshotSeconds, 1800);
  assert.equal(f.changedBytes, 100 * MB);
  assert.equal(f.throughput, 10 * MB, 'the incrementals: 600 MB in 60 s');
  assert.equal(f.fixedSeconds, 2, 'median of duration minus data time');
  assert.equal(f.seconds, 2 + 10);
  assert.equal(f.limitedToMbps, undefined);
  assert.deepEqual(forecastLines(r), [
    'final sync now: ~12 s (95 MiB changed since the last cycle, 10 MB/s)',
    '  change rate 191 MiB/h over the last 3 cycles (286 MiB/h, 191 MiB/h, 95 MiB/h), 30 min since the last snapshot; fixed part of a cycle 2.0 s',
  ]);

  // Only the newest 3 count; an older, busier cycle is forgotten.
  const more = [cycle(0, 'full', -3600, 10, 9, 90 * MB), ...cycles.map((c) => ({ ...c, seq: c.seq + 1, kind: c.kind === 'full' ? 'incremental' as const : c.kind, changedBytes: c.kind === 'full' ? 5000 * MB : c.changedBytes }))];
  const m = forecastFinalSync(more, { bandwidthMbps: 0 }, new Date(T0 + (10800 + 1800) * 1000));
  assert.ok(m.available);
  assert.equal(m.forecast.changeRatePerHour, 200 * MB);
});

test('the wire limit in force now (windows included) bounds the throughput, scaled by the measured compression', () => {
  // 100 MB changed went as 50 MB on the wire in each cycle
  const cycles = [cycle(1, 'full', 0, 10, 9, 10 * MB, 5 * MB), cycle(2, 'incremental', 600, 12, 10, 100 * MB, 50 * MB)];
  const at = new Date(T0 + 1200 * 1000); // Tuesday 10:20 UTC
  const plain = forecastFinalSync(cycles, { bandwidthMbps: 0 }, at);
  assert.ok(plain.available);
  assert.equal(plain.forecast.throughput, 10 * MB);
  // 40 Mbps = 5 MB/s of wire = 10 MB/s of changed bytes at 2:1: not binding
  const same = forecastFinalSync(cycles, { bandwidthMbps: 40 }, at);
  assert.ok(same.available);
  assert.equal(same.forecast.limitedToMbps, undefined);
  // a window of 8 Mbps now = 1 MB/s wire = 2 MB/s changed
  const win = forecastFinalSync(cycles, { bandwidthMbps: 0, bandwidthWindows: parseBandwidthWindows(['Tue 10:00-11:00 UTC=8']) }, at);
  assert.ok(win.available);
  assert.equal(win.forecast.throughput, 2 * MB);
  assert.equal(win.forecast.limitedToMbps, 8);
  assert.equal(win.forecast.changedBytes, 100 * MB);
  assert.equal(win.forecast.seconds, 2 + 50);
  assert.match(forecastLines(win)[0]!, /2\.0 MB\/s, the 8 Mbps limit\)/);
});

test('no forecast until a full and one incremental have committed, saying what is missing', () => {
  assert.deepEqual(forecastFinalSync([], { bandwidthMbps: 0 }), { available: false, reason: 'no cycle has committed yet' });
  const full = cycle(1, 'full', 0, 10, 9, 10 * MB);
  assert.deepEqual(forecastFinalSync([full], { bandwidthMbps: 0 }), { available: false, reason: 'the change rate needs one incremental cycle after the full one' });
  const failed = { ...cycle(2, 'incremental', 600, 5, 4, 1 * MB), state: 'failed' as const };
  assert.equal(forecastFinalSync([full, failed], { bandwidthMbps: 0 }).available, false, 'a failed cycle measures nothing');
  // Older records (no snapshotAt, no dataMs): the start stands in for the snapshot; throughput from the full cycle's... nothing timed
  const old = [{ ...full, snapshotAt: null, dataMs: null }, { ...cycle(2, 'incremental', 600, 5, 4, MB), snapshotAt: null, dataMs: null }];
  assert.deepEqual(forecastFinalSync(old, { bandwidthMbps: 0 }), { available: false, reason: 'no cycle has measured its throughput yet (a cycle that moved data records it)' });
  assert.match(forecastLines(forecastFinalSync([full], { bandwidthMbps: 0 }))[0]!, /^final sync now: no forecast yet \(the change rate needs one incremental/);
});
