/**
 * A cancelled drill stops at once: the receiver stopping (DrillRunner.close) or the drill's deadline
 * aborts the step under way, whose libguestfs appliance, virt-v2v or QEMU is killed within seconds;
 * no process naming the drill's temporary folders and no export or overlay is left, the work folder
 * is gone and the image is unpinned. --drill-memory's value reaches the appliance (`-m`).
 * Real parts: the image store, libguestfs under TCG, QEMU; small disks so that each case takes seconds.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImageStore, type ImageStore } from '../../src/store/index.ts';
import { DrillRunner } from '../../src/receiver/drills.ts';
import { targetDrillSteps } from '../../src/cli/drill-steps.ts';
import { convertImage } from '../../src/target/convert.ts';
import { bootTest } from '../../src/target/boot-test.ts';
import { silentLogger } from '../../src/util/log.ts';
import { UserError } from '../../src/util/errors.ts';
import { commitDisk, hangingBootSector, leftoverFiles, leftoverProcesses, processesWith, MiB } from './boot-helpers.ts';

const SOURCE = 'src-abort';

/** Waits until a process whose command line names `needle` and matches `re` runs; returns its command line. */
async function waitForProcess(needle: string, re: RegExp, timeoutMs = 180_000): Promise<string> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    const p = (await processesWith(needle)).find((x) => re.test(x.cmd));
    if (p) return (await readFile(`/proc/${p.pid}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ');
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`no process ${re} naming ${needle} within ${timeoutMs / 1000} s`);
}

async function rig(t: import('node:test').TestContext, disk: Buffer): Promise<{ store: ImageStore; scratch: string; root: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-drill-abort-'));
  const scratch = join(dir, 'tmp');
  await mkdir(scratch);
  // The steps' temporary folders (os.tmpdir()) in `scratch`; the appliance cache stays the shared one.
  const saved = { TMPDIR: process.env.TMPDIR, LIBGUESTFS_CACHEDIR: process.env.LIBGUESTFS_CACHEDIR };
  process.env.LIBGUESTFS_CACHEDIR = saved.LIBGUESTFS_CACHEDIR ?? tmpdir();
  process.env.TMPDIR = scratch;
  const store = await openImageStore(join(dir, 'store'));
  await commitDisk(store, SOURCE, disk);
  t.after(async () => {
    for (const [k, v] of Object.entries(saved)) { if (v === undefined) delete process.env[k]; else process.env[k] = v; }
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { store, scratch, root: join(dir, 'drills') };
}

async function nothingLeft(store: ImageStore, scratch: string, root: string, drillId: string): Promise<void> {
  assert.deepEqual(await leftoverProcesses(scratch), [], 'no appliance, guestfish or QEMU left');
  assert.deepEqual(await leftoverFiles(scratch), [], 'no export, overlay or session folder left');
  assert.deepEqual((await readdir(join(root, SOURCE, drillId))).sort(), ['report.json'], 'the work folder is removed');
  const [image] = await store.listImages(SOURCE);
  await store.removeImage(SOURCE, image!.imageId); // refused while pinned
}

test('a drill whose receiver stops during inspect ends within seconds: appliance killed, nothing left, DRILL_INTERRUPTED; --drill-memory reaches the appliance', async (t) => {
  const { store, scratch, root } = await rig(t, Buffer.alloc(64 * MiB));
  const runner = new DrillRunner(store, root, targetDrillSteps({ memoryMiB: 1024 }), silentLogger, {});
  const r = await runner.start(SOURCE);
  const cmd = await waitForProcess(scratch, /qemu-system/);
  assert.match(cmd, / -m 1024 /, 'the appliance runs with the drill memory');
  const t0 = Date.now();
  await runner.close();
  const took = (Date.now() - t0) / 1000;
  t.diagnostic(`close() took ${took.toFixed(1)} s`);
  assert.ok(took < 15, `the drill stopped promptly (${took} s)`);
  const rep = await runner.get(SOURCE, r.drillId);
  assert.equal(rep.state, 'abnormal');
  assert.equal(rep.failure?.code, 'DRILL_INTERRUPTED', JSON.stringify(rep.failure));
  assert.deepEqual(rep.steps.map((s) => [s.step, s.ok]), [['inspect', false]]);
  await nothingLeft(store, scratch, root, r.drillId);
});

test('a drill past its deadline is stopped during the appliance start: DRILL_TIMEOUT, nothing left', async (t) => {
  const { store, scratch, root } = await rig(t, Buffer.alloc(64 * MiB));
  const runner = new DrillRunner(store, root, targetDrillSteps(), silentLogger, { deadlineSeconds: 4 });
  t.after(() => runner.close());
  const t0 = Date.now();
  const r = await runner.start(SOURCE);
  let rep = r;
  while (rep.state === 'queued' || rep.state === 'running') { await new Promise((x) => setTimeout(x, 200)); rep = await runner.get(SOURCE, r.drillId); }
  const took = (Date.now() - t0) / 1000;
  t.diagnostic(`the drill ended after ${took.toFixed(1)} s: ${rep.failure?.code}`);
  assert.equal(rep.failure?.code, 'DRILL_TIMEOUT', JSON.stringify(rep.failure));
  assert.match(rep.failure!.message, /deadline of 4 s/);
  assert.ok(took < 4 + 15, `stopped promptly after the deadline (${took} s)`);
  await nothingLeft(store, scratch, root, r.drillId);
});

test('convert aborted while its libguestfs session runs (with the given memory): rejects with the reason, no output folder, no DIR.tmp-*, nothing left', async (t) => {
  const { store, scratch } = await rig(t, Buffer.alloc(64 * MiB));
  const [image] = await store.listImages(SOURCE);
  // The convert's folders: DIR.tmp-* beside DIR (its overlays, which the appliance names) and a scratch folder in TMPDIR.
  const parent = join(scratch, '..');
  const out = join(parent, 'converted');
  const abort = new AbortController();
  const p = convertImage(store, SOURCE, image!.imageId, { to: 'kvm', output: out, signal: abort.signal, memoryMiB: 1024 });
  let early: unknown = null;
  p.catch((e: unknown) => { early = e; });
  const cmd = await Promise.race([waitForProcess(parent, /qemu-system/), p.then(() => { throw new Error('convert ended'); }, () => { throw early; })]);
  assert.match(cmd, / -m 1024 /, 'the convert\'s own libguestfs session runs with the given memory');
  const t0 = Date.now();
  abort.abort(new UserError('DRILL_INTERRUPTED', 'stopped by the test', 'none'));
  await assert.rejects(p, (e: Error & { code?: string }) => e.code === 'DRILL_INTERRUPTED');
  t.diagnostic(`convert rejected ${((Date.now() - t0) / 1000).toFixed(1)} s after the abort`);
  assert.ok(Date.now() - t0 < 15_000);
  assert.deepEqual((await readdir(parent)).filter((n) => n.startsWith('converted')), [], 'no output folder and no DIR.tmp-*');
  assert.deepEqual(await leftoverProcesses(parent), []);
  assert.deepEqual(await leftoverFiles(scratch), []);
  await store.removeImage(SOURCE, image!.imageId);
});

test('boot-test aborted while QEMU runs: QEMU killed at once, rejects with the reason, no overlay left; the guest memory is capped', async (t) => {
  const disk = Buffer.alloc(1 * MiB);
  hangingBootSector('VMLIFT-ABORT-TEST hanging').copy(disk);
  const { store, scratch } = await rig(t, disk);
  const [image] = await store.listImages(SOURCE);
  const abort = new AbortController();
  const p = bootTest(store, { sourceId: SOURCE, imageId: image!.imageId, timeoutSec: 300, reportDir: join(scratch, '..', 'report'), accel: 'tcg', signal: abort.signal, maxMemoryMiB: 512 });
  p.catch(() => undefined);
  const cmd = await waitForProcess(scratch, /qemu-system/, 60_000);
  assert.match(cmd, / -m 512 /, 'the boot\'s guest memory is capped (1024 MiB unconverted, at most 512 here)');
  const t0 = Date.now();
  abort.abort(new UserError('DRILL_TIMEOUT', 'stopped by the test', 'none'));
  await assert.rejects(p, (e: Error & { code?: string }) => e.code === 'DRILL_TIMEOUT');
  assert.ok(Date.now() - t0 < 10_000, 'rejected within seconds');
  assert.deepEqual(await leftoverProcesses(scratch), []);
  assert.deepEqual(await leftoverFiles(scratch), []);
  await store.removeImage(SOURCE, image!.imageId);
});
