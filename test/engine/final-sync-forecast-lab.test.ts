/**
 * The final-sync forecast on the lab: a guest writes at a scripted rate, incrementals measure the
 * change rate, throughput (under a 40 Mbps limit) and fixed part of a cycle; `job show` prints the
 * forecast, and the final sync run right after it (the writes stopped, as services are) takes the
 * predicted time within ±30 %.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startRig, settings, liveSha, imageSha, MiB } from './harness.ts';
import { ChangeWriter, rigApi } from './final-sync-helpers.ts';
import { vmlift } from '../vsphere/helpers.ts';
import type { ForecastResult } from '../../src/engine/final-sync-forecast.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('job show predicts the final sync from the measured change rate and throughput, within ±30 % of the final sync that follows', async (t) => {
  const rig = await startRig({ vms: 1, diskMb: 256 });
  t.after(() => rig.close());
  const api = await rigApi(rig);
  t.after(() => api.close());
  const { lab, engine, rx } = rig;
  const vm = lab.vm('vm-0001');
  const disk = vm.disks[0]!;
  const writer = new ChangeWriter(lab, vm.name, disk.key, { rate: 1.5e6, from: 16 * MiB, to: disk.capacity, block: MiB });
  t.after(() => writer.stop());

  engine.createJob({ id: 'fs', vmRef: vm.moref, settings: settings({ bandwidthMbps: 40, compression: 0 }) });
  engine.start('fs');
  writer.start(); // from before the full cycle's snapshot: every interval the rate is measured over has the same writes
  await engine.runNow('fs');
  assert.equal(engine.getJob('fs').state, 'waiting', JSON.stringify(engine.getJob('fs').error));
  const none = await vmlift(['job', 'show', 'fs', '--home', api.home]);
  assert.equal(none.code, 0, none.stderr);
  assert.match(none.stdout, /final sync now: no forecast yet \(the change rate needs one incremental cycle after the full one\)/);

  for (const gap of [5000, 7000, 6000]) {
    await sleep(gap);
    engine.requestSync('fs');
    await engine.runNow('fs');
    assert.equal(engine.getJob('fs').state, 'waiting', JSON.stringify(engine.getJob('fs').error));
  }
  const shown = await vmlift(['job', 'show', 'fs', '--home', api.home]);
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, /final sync now: ~\d+(\.\d)? s \(\d+(\.\d)? MiB changed since the last cycle, \d+(\.\d)? MB\/s(, the 40 Mbps limit)?\)/);
  assert.match(shown.stdout, /change rate \d+(\.\d)? GiB\/h over the last 3 cycles/);
  const json = JSON.parse((await vmlift(['job', 'show', 'fs', '--home', api.home, '--json'])).stdout) as { finalSync: ForecastResult };
  assert.equal(json.finalSync.available, true);

  await sleep(9000);
  // The services stop: no more writes; the forecast is read now and the final sync starts at once.
  await writer.stop();
  const res = await fetch(`http://127.0.0.1:${JSON.parse(await import('node:fs').then((fs) => fs.readFileSync(`${api.home}/api.json`, 'utf8'))).port}/v1/jobs/fs`,
    { headers: { authorization: `Bearer ${(await import('node:fs')).readFileSync(`${api.home}/api-token`, 'utf8')}` } });
  const { finalSync } = await res.json() as { finalSync: ForecastResult };
  assert.ok(finalSync.available, JSON.stringify(finalSync));
  const f = finalSync.forecast;
  const expected = await liveSha(lab, vm.name, disk.key, disk.capacity);
  const t0 = performance.now();
  engine.complete('fs');
  await engine.runNow('fs');
  const measured = (performance.now() - t0) / 1000;
  const job = engine.getJob('fs');
  assert.equal(job.state, 'completed', JSON.stringify(job.error));
  const [final] = rig.state.listCycles('fs');
  assert.equal(final!.kind, 'final');
  assert.equal(await imageSha(rx, job.sourceId, final!.imageId!, 0, disk.capacity), expected, 'the final image is the disk');

  const ratio = f.seconds / measured;
  const timings = rig.state.listCycles('fs', 10).reverse().map((c) => `${c.kind} ${(c.changedBytes / MiB).toFixed(1)} MiB: ` +
    `${((Date.parse(c.endedAt!) - Date.parse(c.startedAt)) / 1000).toFixed(2)} s, data ${((c.dataMs ?? 0) / 1000).toFixed(2)} s`);
  console.log(`final-sync forecast cycles: ${timings.join('; ')}`);
  console.log(`final-sync forecast figures: predicted ${f.seconds.toFixed(2)} s (${(f.changedBytes / MiB).toFixed(1)} MiB at ${(f.throughput / 1e6).toFixed(2)} MB/s ` +
    `+ ${f.fixedSeconds.toFixed(2)} s fixed; rate ${(f.changeRatePerHour / 3600 / 1e6).toFixed(2)} MB/s written 1.50 MB/s), ` +
    `measured ${measured.toFixed(2)} s (${(final!.changedBytes / MiB).toFixed(1)} MiB changed, data ${((final!.dataMs ?? 0) / 1000).toFixed(2)} s); predicted/measured ${ratio.toFixed(3)}`);
  assert.ok(Math.abs(ratio - 1) <= 0.30, `predicted ${f.seconds.toFixed(2)} s is within ±30 % of the measured ${measured.toFixed(2)} s`);
  assert.ok(Math.abs(f.changedBytes / final!.changedBytes - 1) <= 0.30, `predicted ${f.changedBytes} changed bytes within ±30 % of the final's ${final!.changedBytes}`);
});
