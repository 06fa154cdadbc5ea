/**
 * Source faults at the level of a job (issue 12 §3), with real fault injectors:
 * - the NBD path: the connector's per-disk NBD server is the lab's view (lab/nbd-view.sh) behind
 *   Debian's nbdkit `error` and `delay` filters. Transient EIO (while a trigger file exists) and read
 *   latency are retried and the image is bit-identical to the snapshot; an EIO that never clears and
 *   an EPERM put the job in `error` naming the disk, the offset and the fix, with no snapshot left and
 *   no image published, and `job resume` after the fault is gone finishes bit-identical.
 * - VDDK (the libvixDiskLib double): a host whose NFC server refuses reads longer than it can buffer
 *   (`nfc_max_read`): the connector halves that disk's read size and the job finishes bit-identical.
 *   (NFC allocation failures and a refused login are in transports-accept-lab.test.ts and
 *   connector-vddk.test.ts.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { startRig, settings, liveSha, imageSha, guestWrites, MiB, type EngineRig, type RigOpener } from './harness.ts';
import { transportDiskOpener } from '../../src/cli/wiring.ts';
import { shutdownVddk } from '../../src/source/vddk/index.ts';
import { PROJECT_ROOT } from '../../src/util/root.ts';

/** A logger whose records (parsed) land in `lines`. */
function capturingLogger(): { logger: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => { for (const l of s.split('\n')) if (l) lines.push(JSON.parse(l)); } });
  return { logger, lines };
}

/** The rig's disks open through the connector's NBD servers: nbd-view.sh with `filters` (nbdkit filter arguments, placeholders allowed). */
function nbdOpener(filters: string[], logger: pino.Logger): RigOpener {
  return ({ vc, port, lab, dir }) => {
    const nbdCommand = ['bash', path.join(PROJECT_ROOT, 'lab/nbd-view.sh'), lab.dir, '{socket}', '{vm}', '{snapshot}', '{diskKey}', ...filters];
    return transportDiskOpener(vc, port, { user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } },
      { nbdCommand, nbdDir: path.join(dir, 'nbd') }, 2 * MiB, logger);
  };
}

async function expectedShas(rig: EngineRig, vmName: string): Promise<string[]> {
  const vm = rig.lab.vm(vmName);
  for (const d of vm.disks) await guestWrites(rig.lab, vm.name, d.key, d.capacity, 20);
  return Promise.all(vm.disks.map((d) => liveSha(rig.lab, vm.name, d.key, d.capacity)));
}

async function assertImage(rig: EngineRig, id: string, vmName: string, expected: string[]): Promise<void> {
  const job = rig.engine.getJob(id);
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  const [c] = rig.state.listCycles(id);
  assert.equal(c!.state, 'committed');
  for (const [i, d] of rig.lab.vm(vmName).disks.entries()) {
    assert.equal(await imageSha(rig.rx, job.sourceId, c!.imageId!, i, d.capacity), expected[i], `disk ${d.key} is the disk at the snapshot`);
  }
  assert.deepEqual((await rig.vc.snapshots(rig.lab.vm(vmName).moref)).snapshots, [], 'no snapshot left on the VM');
}

test('NBD through nbdkit\'s error and delay filters: transient EIO and 20 ms of latency per read are retried and the image is bit-identical', async (t) => {
  const { logger, lines } = capturingLogger();
  let trigger = '';
  const rig = await startRig({
    retry: { attempts: 3, baseDelayMs: 50, maxDelayMs: 200 },
    opener: (a) => {
      trigger = path.join(path.dirname(a.lab.dir), 'fail');
      return nbdOpener(['--filter=error', '--filter=delay', 'error=EIO', 'error-pread-rate=100%', `error-pread-file=${trigger}-{diskKey}`, 'rdelay=20ms'], logger)(a);
    },
  });
  t.after(() => rig.close());
  const vm = rig.lab.vm('two-disks');
  const expected = await expectedShas(rig, vm.name);
  const failing = `${trigger}-${vm.disks[0]!.key}`;
  writeFileSync(failing, '');
  // The fault clears once the NBD client has met it (its first retry warning).
  const retries = () => lines.filter((l) => /nbd read at \d+ failed, retrying/.test(String(l.msg)));
  const clear = setInterval(() => { if (retries().length > 0) rmSync(failing, { force: true }); }, 10);
  t.after(() => clearInterval(clear));
  rig.engine.createJob({ id: 'flaky', vmRef: vm.moref, settings: settings({ transport: 'nbd', compression: 0 }) });
  rig.engine.start('flaky');
  const t0 = Date.now();
  await rig.engine.runNow('flaky');
  const ms = Date.now() - t0;
  clearInterval(clear);
  assert.ok(!existsSync(failing), 'the fault was met and cleared');
  await assertImage(rig, 'flaky', vm.name, expected);
  assert.ok(retries().length >= 1, 'the NBD client retried the failed reads');
  assert.match(String(retries()[0]!.err), /server replied EIO/);
  assert.equal(rig.counters.snapshotsCreated, 1, 'retried inside the read, not by a new cycle attempt');
  assert.equal(rig.engine.getJob('flaky').error, null);
  t.diagnostic(`transient EIO + rdelay 20 ms: cycle ${ms} ms, ${retries().length} read retries`);
});

test('NBD: an EIO that never clears, then an EPERM, put the job in error naming the disk, the offset and the fix; no snapshot, no image; resume finishes bit-identical', async (t) => {
  let trigger = '';
  const { logger } = capturingLogger();
  type Errno = 'EIO' | 'EPERM';
  const openers: Partial<Record<Errno, ReturnType<RigOpener>>> = {};
  let errno: Errno = 'EIO';
  const rig = await startRig({
    retry: { attempts: 2, baseDelayMs: 50, maxDelayMs: 100 },
    opener: (a) => {
      trigger = path.join(path.dirname(a.lab.dir), 'fail');
      // error-pread-file: the filter fails reads only while the file exists
      for (const e of ['EIO', 'EPERM'] as const) {
        openers[e] = nbdOpener(['--filter=error', `error=${e}`, 'error-pread-rate=100%', `error-pread-file=${trigger}-{diskKey}`], logger)({ ...a, dir: path.join(a.dir, e) });
      }
      return { open: (...x) => openers[errno]!.open(...x), close: async () => { for (const o of Object.values(openers)) await o.close?.(); } };
    },
  });
  t.after(() => rig.close());
  const vm = rig.lab.vm('two-disks');
  const bad = vm.disks[1]!;
  const failing = `${trigger}-${bad.key}`;
  for (const [id, e] of [['eio', 'EIO'], ['eperm', 'EPERM']] as const) {
    errno = e;
    const expected = await expectedShas(rig, vm.name);
    writeFileSync(failing, '');
    rig.engine.createJob({ id, vmRef: vm.moref, settings: settings({ transport: 'nbd' }) });
    rig.engine.start(id);
    const t0 = Date.now();
    await rig.engine.runNow(id);
    const ms = Date.now() - t0;
    const job = rig.engine.getJob(id);
    assert.equal(job.state, 'error', JSON.stringify(job));
    assert.equal(job.error?.step, 'transfer');
    assert.equal(job.error?.code, 'SOURCE_READ');
    // EIO is transient: each read was tried 4 times and the cycle twice; EPERM is the request's own fault: once.
    assert.equal(job.error?.attempts, e === 'EIO' ? 2 : 1);
    assert.match(job.error!.message, new RegExp(`^transfer: disk ${bad.key} \\([^)]+\\) of ${vm.moref}: reading \\d+ bytes at offset \\d+ `), job.error!.message);
    assert.match(job.error!.message, e === 'EIO' ? /failed after 4 attempts: .*server replied EIO/ : /failed: .*server replied EPERM/);
    assert.match(job.error!.fix ?? '', new RegExp(`check that .* can still be read.*then \`vmlift job resume ${id}\``));
    assert.deepEqual((await rig.vc.snapshots(vm.moref)).snapshots, [], 'the cleanup step removed the snapshot');
    assert.deepEqual(await rig.rx.rx.store.listImages(job.sourceId).catch(() => []), [], 'no image published');
    assert.equal(rig.state.getDisks(id).length, 0, 'no changeId recorded');
    t.diagnostic(`permanent ${e}: job in error after ${ms} ms: ${job.error!.message}`);

    rmSync(failing);
    assert.equal(rig.engine.resume(id).state, 'syncing');
    await rig.engine.runNow(id);
    await assertImage(rig, id, vm.name, expected);
  }
});

/** A rig reading through the VDDK double (lab_map mode) with `extra` lines in its config; `stats()` reads its counters. */
async function vddkRig(extra: string, logger: pino.Logger): Promise<{ rig: EngineRig; stats: () => Record<string, number> }> {
  execFileSync(path.join(PROJECT_ROOT, 'native/build.sh'));
  let statsFile = '';
  const rig = await startRig({
    vddkMap: true, retry: { attempts: 2, baseDelayMs: 50, maxDelayMs: 100 }, nfc: { backoffMs: 50, maxBackoffMs: 200, recoveryMs: 600_000 }, limiterLogger: logger,
    opener: ({ vc, port, lab, dir }) => {
      statsFile = path.join(dir, 'vddk-stats');
      const vddkConfigFile = path.join(dir, 'vddk.conf');
      writeFileSync(vddkConfigFile, `lab_map=${lab.vddkMapFile}\nstats_file=${statsFile}\n${extra}`, { mode: 0o600 });
      const o = transportDiskOpener(vc, port, { user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } }, {
        vddkLibdir: path.join(PROJECT_ROOT, 'native/build/vddk-double'), vddkConfigFile, nbdDir: path.join(dir, 'nbd'),
      }, 2 * MiB, logger);
      return { open: (...a) => o.open(...a), close: async () => { await o.close(); shutdownVddk(); } };
    },
  });
  const stats = () => Object.fromEntries(readFileSync(statsFile, 'utf8').split(/\s+/).filter((l) => l.includes('='))
    .map((l) => { const [k, v] = l.split('='); return [k!, Number(v)]; }));
  return { rig, stats };
}

test('VDDK: a host whose NFC server refuses reads over 512 KiB (the double\'s nfc_max_read): the disk\'s read size is halved, logged, and the job finishes bit-identical', async (t) => {
  const { logger, lines } = capturingLogger();
  const { rig, stats } = await vddkRig('nfc_max_read=524288\n', logger);
  t.after(() => rig.close());
  const vm = rig.lab.vm('two-disks');
  const expected = await expectedShas(rig, vm.name);
  rig.engine.createJob({ id: 'nfc', vmRef: vm.moref, settings: settings({ transport: 'vddk' }) });
  rig.engine.start('nfc');
  const t0 = Date.now();
  await rig.engine.runNow('nfc');
  const ms = Date.now() - t0;
  await assertImage(rig, 'nfc', vm.name, expected);
  assert.equal(rig.counters.snapshotsCreated, 1, 'one cycle attempt');
  const halved = lines.filter((l) => /halved this disk's read size/.test(String(l.msg)));
  for (const d of vm.disks) {
    const sizes = halved.filter((l) => l.diskKey === d.key).map((l) => Number(l.readSize));
    assert.equal(sizes.at(-1), 524288, `disk ${d.key} reads 512 KiB at the end (${JSON.stringify(sizes)})`);
    assert.ok(sizes.every((x, i) => i === 0 || x < sizes[i - 1]!), `each halving lowers the size, none repeats (${JSON.stringify(sizes)})`);
  }
  const s = stats();
  assert.ok(s.nfc_errors! >= 2 && s.nfc_errors! <= 40, `a bounded number of refused reads (${s.nfc_errors})`);
  assert.equal(s.connections, 0);
  assert.equal(s.handles, 0);
  t.diagnostic(`nfc_max_read=512 KiB: cycle ${ms} ms, ${s.nfc_errors} refused reads, ${halved.length} halvings`);
});

test('VDDK: busy reads are retried; a sector that cannot be read (VIX_E_DISK_NOIO) puts the job in error naming the disk and the offset, no snapshot, no image, nothing left open', async (t) => {
  const { logger, lines } = capturingLogger();
  // sector 100 is in the first MiB of every disk of the lab, which always holds data
  const { rig, stats } = await vddkRig('busy_reads=3\nfail_sector=100\n', logger);
  t.after(() => rig.close());
  const vm = rig.lab.vm('two-disks');
  rig.engine.createJob({ id: 'noio', vmRef: vm.moref, settings: settings({ transport: 'vddk' }) });
  rig.engine.start('noio');
  await rig.engine.runNow('noio');
  const job = rig.engine.getJob('noio');
  assert.equal(job.state, 'error', JSON.stringify(job));
  assert.equal(job.error?.step, 'transfer');
  assert.equal(job.error?.attempts, 1, 'an I/O error of the disk is not retried by a new cycle');
  assert.match(job.error!.message, new RegExp(`^transfer: disk (${vm.disks.map((d) => d.key).join('|')}) \\([^)]+\\) of ${vm.moref}: reading \\d+ bytes at offset 0 of vddk://`), job.error!.message);
  assert.match(job.error!.fix ?? '', /then `vmlift job resume noio`/);
  assert.ok(lines.some((l) => /vddk read at \d+ failed, retrying/.test(String(l.msg)) && /VIX error 5\b/.test(String(l.err))), 'the busy reads were retried');
  assert.deepEqual((await rig.vc.snapshots(vm.moref)).snapshots, [], 'no snapshot left');
  assert.deepEqual(await rig.rx.rx.store.listImages(job.sourceId).catch(() => []), [], 'no image published');
  // The other disk's reads stop when the first fails; its connection closes as they unwind.
  let s = stats();
  for (const end = Date.now() + 10_000; (s.connections !== 0 || s.handles !== 0) && Date.now() < end; s = stats()) await new Promise((r) => setTimeout(r, 100));
  assert.equal(s.connections, 0);
  assert.equal(s.handles, 0);
  t.diagnostic(`VIX_E_DISK_NOIO: ${job.error!.message}`);
});
