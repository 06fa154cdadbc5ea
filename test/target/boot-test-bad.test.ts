/**
 * `vmlift image boot-test` on bad input, each a real QEMU boot under TCG (or none): a zeroed boot
 * sector, a disk with no OS, a guest that hangs (timeout), Ctrl-C during a boot, an image id that
 * does not exist. Each exits non-zero with a clear message and leaves no QEMU, no overlay folder
 * and no pin behind; the store does not change.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { openImageStore } from '../../src/store/index.ts';
import { pidAlive } from '../../src/store/pins.ts';
import type { BootTestReport } from '../../src/target/boot-test.ts';
import { chooseAccel, probeBootSector } from '../../src/target/accel-probe.ts';
import { MiB, commitDisk, hangingBootSector, isPng, leftoverFiles, leftoverProcesses, processesWith, storeDigest, vmlift } from './boot-helpers.ts';

const run = promisify(execFile);

async function setup(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-boot-bad-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const dataDir = join(dir, 'data'), scratch = join(dir, 'tmp'), reports = join(dir, 'reports');
  await mkdir(scratch);
  const store = await openImageStore(join(dataDir, 'store'), { chunkSize: 1 << 20 });
  return { dir, dataDir, scratch, reports, store };
}

/** No process and no file of the run left; the pin removed (or, after a signal ended the process, stale: its pid is gone). */
async function noLeftovers(scratch: string, dataDir: string, source: string, killed = false): Promise<void> {
  assert.deepEqual(await leftoverProcesses(scratch), [], 'no QEMU (or other process) with the temporary folder left');
  assert.deepEqual(await leftoverFiles(scratch), [], 'no overlay folder left');
  const pins = await readdir(join(dataDir, 'store', 'sources', source, 'pins')).catch(() => []);
  if (killed) assert.deepEqual(pins.filter((n) => pidAlive(Number(n.split('.')[1]))), [], 'no live pin');
  else assert.deepEqual(pins, [], 'the pin is released');
}

test('boot-test: zeroed boot sector -> NO_BOOTABLE_DEVICE (SeaBIOS on the serial console), disk with no OS -> NO_OS, hanging guest -> BOOT_TIMEOUT; each exit 5 with a fix and a screenshot, nothing left behind, store unchanged', async (t) => {
  const { dataDir, scratch, reports, store } = await setup(t);
  await commitDisk(store, 'zero', Buffer.alloc(16 * MiB));
  // A data disk: MBR partition table (no boot code) and an ext4 filesystem, as a VM's second disk holds.
  const noos = join(scratch, '..', 'noos.raw');
  await run('truncate', ['-s', '32M', noos]);
  await new Promise<void>((res, rej) => {
    const p = spawn('sfdisk', ['-q', noos], { stdio: ['pipe', 'ignore', 'inherit'] });
    p.on('close', (c) => (c === 0 ? res() : rej(new Error(`sfdisk exited ${c}`))));
    p.stdin.end('label: dos\nstart=2048, type=83\n');
  });
  await run('mkfs.ext4', ['-q', '-F', '-E', `offset=${MiB}`, noos, '30M']);
  await commitDisk(store, 'noos', await readFile(noos));
  const hang = Buffer.alloc(16 * MiB);
  hangingBootSector('vmlift test guest: hanging here').copy(hang);
  await commitDisk(store, 'hang', hang);
  const before = await storeDigest(join(dataDir, 'store'));

  const cases = [
    { source: 'zero', code: 'NO_BOOTABLE_DEVICE', timeout: '120', tail: /No bootable device/, fix: /boot signature/ },
    // SeaBIOS's serial console now and then sends a character twice ("Booting from HHard Disk...")
    { source: 'noos', code: 'NO_OS', timeout: '120', tail: /Booting from H+ard Disk/, fix: /no operating system/ },
    { source: 'hang', code: 'BOOT_TIMEOUT', timeout: '15', tail: /vmlift test guest: hanging here/, fix: /raise --timeout/ },
  ];
  for (const c of cases) {
    const t0 = Date.now();
    const rd = join(reports, c.source);
    const r = await vmlift(['image', 'boot-test', '--data-dir', dataDir, '--source', c.source, '--image', '1', '--timeout', c.timeout,
      '--accel', 'tcg', '--report-dir', rd, '--json'], { TMPDIR: scratch }).done;
    t.diagnostic(`${c.source}: exit ${r.code} after ${(Date.now() - t0) / 1000} s`);
    assert.equal(r.code, 5, r.err);
    const rep = JSON.parse(r.out) as BootTestReport;
    assert.equal(rep.passed, false);
    assert.equal(rep.accel, 'tcg');
    assert.equal(rep.failure?.code, c.code, `${JSON.stringify(rep.failure)}; console tail: ${JSON.stringify(rep.consoleTail)}`);
    assert.match(rep.failure!.fix, c.fix);
    assert.match(rep.consoleTail.join('\n'), c.tail);
    assert.match(r.err, new RegExp(`vmlift: error: ${c.code}: .*\\n  fix: `));
    // The boot code of the disk with no OS runs into zeros under TCG: sometimes it loops (QEMU stays up,
    // a screenshot is taken), sometimes the CPU resets and QEMU exits (-no-reboot): then no screen is left.
    if (rep.screenshot === null) assert.ok(c.source === 'noos' && /reset right after/.test(rep.failure!.message), `no screenshot: ${rep.failure!.message}`);
    else assert.ok(isPng(await readFile(rep.screenshot)), 'the screenshot is a PNG');
    assert.deepEqual(JSON.parse(await readFile(join(rd, 'report.json'), 'utf8')), rep, 'report.json holds the report');
    await noLeftovers(scratch, dataDir, c.source);
  }
  assert.equal(await storeDigest(join(dataDir, 'store')), before, 'the store did not change');
});

test('boot-test: Ctrl-C (SIGINT) or SIGTERM during a boot ends QEMU, removes the overlays and releases the pin; a missing image is NOT_FOUND before any QEMU starts', async (t) => {
  const { dataDir, scratch, reports, store } = await setup(t);
  const hang = Buffer.alloc(16 * MiB);
  hangingBootSector('vmlift test guest: waiting for Ctrl-C').copy(hang);
  await commitDisk(store, 'hang', hang);

  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    const { child, done } = vmlift(['image', 'boot-test', '--data-dir', dataDir, '--source', 'hang', '--image', '1', '--timeout', '300',
      '--accel', 'tcg', '--report-dir', join(reports, sig)], { TMPDIR: scratch });
    const deadline = Date.now() + 60_000;
    while (!(await processesWith(scratch)).some((p) => p.cmd.startsWith('qemu-system')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    assert.ok((await processesWith(scratch)).some((p) => p.cmd.startsWith('qemu-system')), 'QEMU runs on an overlay in the temporary folder');
    const pins = await readdir(join(dataDir, 'store', 'sources', 'hang', 'pins'));
    assert.equal(pins.filter((n) => pidAlive(Number(n.split('.')[1]))).length, 1, 'the image is pinned while it boots');
    child.kill(sig);
    const r = await done;
    assert.notEqual(r.code, 0, sig);
    await noLeftovers(scratch, dataDir, 'hang', true);
  }

  const m = await vmlift(['image', 'boot-test', '--data-dir', dataDir, '--source', 'hang', '--image', '7', '--accel', 'tcg',
    '--report-dir', join(reports, 'missing')], { TMPDIR: scratch }).done;
  assert.equal(m.code, 1);
  assert.match(m.err, /image 7 of source hang does not exist/);
  assert.match(m.err, /fix: list what exists with `vmlift image ls/);
  const j = await vmlift(['image', 'boot-test', '--data-dir', dataDir, '--source', 'hang', '--image', '7', '--json'], { TMPDIR: scratch }).done;
  assert.equal(j.code, 1);
  assert.equal((JSON.parse(j.out) as { error: { code: string } }).error.code, 'NOT_FOUND');
  await noLeftovers(scratch, dataDir, 'hang', true);
});

test('boot-test: QEMU that crashes mid-boot (real QEMU, SIGABRT as a nested host\'s KVM gives it) -> QEMU_CRASHED, exit 5 with the fix, no screenshot, nothing left behind', async (t) => {
  const { dir, dataDir, scratch, reports, store } = await setup(t);
  const hang = Buffer.alloc(16 * MiB);
  hangingBootSector('vmlift test guest: about to crash').copy(hang);
  await commitDisk(store, 'crash', hang);
  // The fault: the real QEMU, aborted 3 s after it starts (by then its QMP and serial sockets are connected).
  const bin = join(dir, 'bin');
  await mkdir(bin);
  const qemu = (await run('sh', ['-c', 'command -v qemu-system-x86_64'])).stdout.trim();
  await writeFile(join(bin, 'qemu-system-x86_64'), `#!/bin/sh\n(sleep 3; kill -ABRT $$) &\nexec ${qemu} "$@"\n`, { mode: 0o755 });
  const rd = join(reports, 'crash');
  const r = await vmlift(['image', 'boot-test', '--data-dir', dataDir, '--source', 'crash', '--image', '1', '--timeout', '120',
    '--accel', 'tcg', '--report-dir', rd, '--json'], { TMPDIR: scratch, PATH: `${bin}:${process.env.PATH}` }).done;
  assert.equal(r.code, 5, r.err);
  const rep = JSON.parse(r.out) as BootTestReport;
  assert.equal(rep.failure?.code, 'QEMU_CRASHED', JSON.stringify(rep.failure));
  assert.match(rep.failure!.message, /QEMU crashed \(signal SIGABRT\) before a login prompt/);
  assert.match(rep.failure!.fix, /--accel tcg/);
  assert.equal(rep.screenshot, null, 'no screen left after a crash');
  assert.match(r.err, /vmlift: error: QEMU_CRASHED: .*\n  fix: /);
  assert.doesNotMatch(r.err, /unexpected error/);
  await noLeftovers(scratch, dataDir, 'crash');
});

test('accel probe: its boot sector prints the marker under TCG (so the probe can pass); here it picks an accelerator with a reason', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-probe-test-'));
  try {
    const img = join(dir, 'probe.img'), out = join(dir, 'serial.log');
    await import('node:fs/promises').then((f) => f.writeFile(img, probeBootSector()));
    const p = spawn('qemu-system-x86_64', ['-accel', 'tcg', '-nodefaults', '-vga', 'std', '-display', 'none', '-m', '16',
      '-drive', `file=${img},format=raw,if=ide`, '-serial', `file:${out}`, '-monitor', 'none'], { stdio: 'ignore' });
    let seen = '';
    for (let i = 0; i < 100 && !seen.includes('VMLIFT-ACCEL-PROBE-OK'); i++) {
      await new Promise((r) => setTimeout(r, 200));
      seen = await readFile(out, 'latin1').catch(() => '');
    }
    p.kill('SIGKILL');
    assert.match(seen, /VMLIFT-ACCEL-PROBE-OK/);
    const c = await chooseAccel();
    assert.ok(c.accel === 'kvm' || c.accel === 'tcg');
    assert.match(c.reason, c.accel === 'kvm' ? /printed its marker/ : /TCG/);
    assert.strictEqual(await chooseAccel(), c, 'cached per process');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
