/**
 * A bandwidth window reaches a cycle in flight at its edge: a full cycle of a lab VM runs at the job's
 * limit, the engine's bandwidth clock is moved so that a window opens 8 s later, and the wire rate
 * measured at a TCP proxy in front of the receiver's data port (real bytes over a real socket) switches
 * from the job's limit to the window's, each within ±10 %, at the edge.
 */
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRig, settings, liveSha, imageSha, MiB } from './harness.ts';
import { FaultProxy } from '../util/fault-proxy.ts';
import { parseBandwidthWindows } from '../../src/engine/bandwidth-windows.ts';
import { rigApi } from './final-sync-helpers.ts';
import { vmlift } from '../vsphere/helpers.ts';

const JOB_MBPS = 16;     // 2.0 MB/s outside the window
const WINDOW_MBPS = 48;  // 6.0 MB/s in it
const LEAD_S = 8;        // the window opens this long after the cycle is under way (a long span: the bucket lets 1 MiB pieces through, a staircase)

/** Bytes per second over [from, to] (ms, performance.now) by a least-squares line through the samples. */
function slope(samples: { t: number; bytes: number }[], from: number, to: number): { rate: number; at0: number } {
  const s = samples.filter((x) => x.t >= from && x.t <= to);
  const n = s.length;
  const mt = s.reduce((a, x) => a + x.t, 0) / n; const mb = s.reduce((a, x) => a + x.bytes, 0) / n;
  const k = s.reduce((a, x) => a + (x.t - mt) * (x.bytes - mb), 0) / s.reduce((a, x) => a + (x.t - mt) ** 2, 0);
  return { rate: k * 1000, at0: mb - k * mt };
}

test('a bandwidth window switches a running cycle\'s wire limit at its edge (rates measured at a proxy, within ±10 %)', async (t) => {
  let offsetMs = 0;
  let dataProxy: FaultProxy | undefined;
  // 11:00 UTC on the bandwidth clock: outside the 12:00-13:00 window
  const today = new Date(); today.setUTCHours(11, 0, 0, 0);
  offsetMs = today.getTime() - Date.now();
  const rig = await startRig({
    vms: 1, diskMb: 96,
    engine: { bandwidthClock: () => new Date(Date.now() + offsetMs), bandwidthPollMs: 250 },
    sender: async (rx) => {
      dataProxy = await FaultProxy.start({ port: rx.rx.dataPort });
      return { dataPort: dataProxy.port };
    },
  });
  t.after(async () => { await rig.close(); await dataProxy?.close(); });
  const { lab, engine, rx } = rig;
  const vm = lab.vm('vm-0001');
  const disk = vm.disks[0]!;
  for (let off = 0; off < 80 * MiB; off += MiB) await lab.write(vm.name, disk.key, off, randomBytes(MiB));
  const expected = await liveSha(lab, vm.name, disk.key, disk.capacity);

  engine.createJob({ id: 'bw', vmRef: vm.moref, settings: settings({
    bandwidthMbps: JOB_MBPS, compression: 0, checksum: false, bandwidthWindows: parseBandwidthWindows(['daily 12:00-13:00 UTC=' + WINDOW_MBPS]),
  }) });
  engine.start('bw');
  const samples: { t: number; bytes: number }[] = [];
  const sampler = setInterval(() => samples.push({ t: performance.now(), bytes: dataProxy!.totals.up }), 100);
  t.after(() => clearInterval(sampler));
  const cycle = engine.runNow('bw');
  await dataProxy!.reached('up', 2 * MiB);
  assert.equal(engine.live('bw')?.bandwidthMbps, JOB_MBPS, 'outside the window: the job\'s limit');
  // Move the bandwidth clock so that 12:00 UTC comes LEAD_S seconds from now.
  const edge = performance.now() + LEAD_S * 1000;
  const noon = new Date(today); noon.setUTCHours(12, 0, 0, 0);
  offsetMs = noon.getTime() - (Date.now() + LEAD_S * 1000);
  await new Promise((r) => setTimeout(r, LEAD_S * 1000 + 1500));
  assert.equal(engine.live('bw')?.bandwidthMbps, WINDOW_MBPS, 'in the window: the window\'s limit');
  await new Promise((r) => setTimeout(r, 4500));
  assert.ok(engine.isRunning('bw'), 'the cycle is still moving data after the edge (the measure needs it)');
  clearInterval(sampler);

  const before = slope(samples, edge - (LEAD_S - 0.5) * 1000, edge - 300);
  const after = slope(samples, edge + 1500, edge + 5500);
  const switchAt = (before.at0 - after.at0) / ((after.rate - before.rate) / 1000);
  const expBefore = (JOB_MBPS * 1e6) / 8; const expAfter = (WINDOW_MBPS * 1e6) / 8;
  console.log(`bandwidth window figures: before the edge ${(before.rate / 1e6).toFixed(3)} MB/s (limit ${expBefore / 1e6}), ` +
    `after ${(after.rate / 1e6).toFixed(3)} MB/s (limit ${expAfter / 1e6}), switch ${((switchAt - edge) / 1000).toFixed(2)} s after the edge`);
  assert.ok(Math.abs(before.rate / expBefore - 1) <= 0.10, `before the edge: ${before.rate} B/s within ±10 % of ${expBefore}`);
  assert.ok(Math.abs(after.rate / expAfter - 1) <= 0.10, `after the edge: ${after.rate} B/s within ±10 % of ${expAfter}`);
  assert.ok(Math.abs(switchAt - edge) <= 1500, `the rate switched ${(switchAt - edge).toFixed(0)} ms from the window's edge (at most 1.5 s)`);

  await cycle;
  const job = engine.getJob('bw');
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  const [c] = rig.state.listCycles('bw');
  assert.equal(await imageSha(rx, job.sourceId, c!.imageId!, 0, disk.capacity), expected, 'the image is the disk');

  // The CLI: job show names the limit in force and the windows; templates and job set take windows; bad ones are refused.
  const api = await rigApi(rig);
  t.after(() => api.close());
  const shown = await vmlift(['job', 'show', 'bw', '--home', api.home]);
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, /bandwidth now: (16 Mbps \(the job's limit, outside its windows\), 48 Mbps from \S+T12:00:00.000Z|48 Mbps \(window daily 12:00-13:00 UTC=48\), 16 Mbps from \S+T13:00:00.000Z)/);
  assert.match(shown.stdout, /windows: daily 12:00-13:00 UTC=48; outside them 16 Mbps/);
  const tpl = await vmlift(['template', 'create', 'office', '--bandwidth-window', 'Mon-Fri 08:00-18:00 Europe/Paris=50', '--bandwidth-window', 'Sat,Sun 00:00-24:00 UTC=0', '--home', api.home, '--json']);
  assert.equal(tpl.code, 0, tpl.stderr);
  assert.deepEqual((JSON.parse(tpl.stdout) as { settings: { bandwidthWindows: unknown[] } }).settings.bandwidthWindows, [
    { days: [1, 2, 3, 4, 5], start: '08:00', end: '18:00', timeZone: 'Europe/Paris', mbps: 50 }, { days: [0, 6], start: '00:00', end: '24:00', timeZone: 'UTC', mbps: 0 }]);
  const bad = await vmlift(['job', 'set', 'bw', '--bandwidth-window', 'Mon-Fri 08:00-18:00 Mars/Olympus=50', '--home', api.home]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /bandwidth window "Mon-Fri 08:00-18:00 Mars\/Olympus=50": unknown time zone "Mars\/Olympus"/);
  assert.match(bad.stderr, /fix: write it like "Mon-Fri 08:00-18:00 Europe\/Paris=50"/);
  const cleared = await vmlift(['job', 'set', 'bw', '--bandwidth-window', 'none', '--home', api.home, '--json']);
  assert.equal(cleared.code, 0, cleared.stderr);
  assert.deepEqual(engine.getJob('bw').settings.bandwidthWindows, [], '"none" removes the windows');
});
