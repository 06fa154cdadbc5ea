/**
 * `vmlift demo`: vmlift's main job end to end on an embedded default. The lab vCenter (govmomi's
 * simulator with disks, CBT and snapshot views), a local receiver, the agentless engine in this
 * process: full cycle, guest writes, two incremental cycles, complete (final sync), export of the
 * final images to qcow2, and a SHA-256 check of every image against the VM's disks at its snapshot.
 * The job's transport is `auto` (VDDK through the libvixDiskLib double); the demo says which each disk used.
 * Then the same for the lab's real Debian guest, with file writes in its filesystem between cycles, and
 * its final image converted for KVM and booted in QEMU, reading the last cycle's marker on its console.
 */
import type { Command } from 'commander';
import { join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { createHash, randomBytes } from 'node:crypto';
import { rm, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { UserError } from '../../util/errors.ts';
import { createLogger, silentLogger } from '../../util/log.ts';
import { formatDuration } from '../../util/duration.ts';
import { startReceiver } from '../../receiver/server.ts';
import { VCenter } from '../../vsphere/index.ts';
import { openStateStore } from '../../state/sqlite.ts';
import { JobEngine } from '../../engine/jobs.ts';
import { LimitedDiskOpener } from '../../engine/limits.ts';
import { resolveSettings } from '../../engine/settings.ts';
import { vcenterService, transportDiskOpener, senderJobServices, type TransportSettings } from '../wiring.ts';
import { shutdownVddk } from '../../source/vddk/index.ts';
import { PROJECT_ROOT } from '../../util/root.ts';
import { formatBytes, printResult, table } from '../output.ts';
import type { ImageStore } from '../../store/types.ts';

const run = promisify(execFile);
const MiB = 1 << 20;
// The lab (lab/) is loaded only when the demo runs.
const labModule = () => import('../../../lab/lab.ts');
type Lab = Awaited<ReturnType<Awaited<ReturnType<typeof labModule>>['startLab']>>;

/** Text from the machine's documentation, so images hold real, compressible data. */
async function realText(bytes: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      if (n >= bytes) return;
      const p = join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile() && /\.(txt|md|html)$|copyright|README/i.test(e.name)) {
        const b = await readFile(p).catch(() => Buffer.alloc(0));
        parts.push(b); n += b.length;
      }
    }
  };
  await walk('/usr/share/doc');
  let out = Buffer.concat(parts);
  while (out.length < bytes) out = Buffer.concat([out, out.length ? out : Buffer.from('vmlift demo data\n')]);
  return out.subarray(0, bytes);
}

/** Fill about `fraction` of a disk with 1 MiB runs of text and random data at spread-out offsets. */
async function fillDisk(lab: Lab, vm: string, key: number, capacity: number, fraction: number): Promise<number> {
  const text = await realText(8 * MiB);
  let written = 0;
  for (let off = 0; off + MiB <= capacity; off += MiB) {
    if (((off / MiB) * 0.618) % 1 >= fraction) continue; // golden-ratio spread: holes between data runs
    const data = (off / MiB) % 3 === 0 ? randomBytes(MiB) : text.subarray((off % (7 * MiB)), (off % (7 * MiB)) + MiB);
    await lab.write(vm, key, off, data);
    written += MiB;
  }
  return written;
}

async function scatteredWrites(lab: Lab, vm: string, key: number, capacity: number, fraction: number): Promise<number> {
  const block = 64 * 1024;
  const count = Math.max(1, Math.round((capacity * fraction) / block));
  for (let i = 0; i < count; i++) {
    await lab.write(vm, key, Math.floor(Math.random() * (capacity / block)) * block, randomBytes(block));
  }
  return count * block;
}

async function sha256Of(read: (off: number, len: number) => Promise<Buffer>, capacity: number): Promise<string> {
  const h = createHash('sha256');
  for (let off = 0; off < capacity; off += 16 * MiB) h.update(await read(off, Math.min(16 * MiB, capacity - off)));
  return h.digest('hex');
}

async function fileSha(path: string): Promise<string> {
  const { stdout } = await run('sha256sum', [path], { maxBuffer: 1 << 20 });
  return stdout.split(' ')[0]!;
}

interface Row {
  vm: string; cycle: string; kind: string; changed: number; read: number; wire: number; seconds: number; image: string; verified: boolean;
  transports: { disk: number; transport: string | null; reason: string | null }[];
}

/**
 * The demo's connector transports, as `auto` sees them: VDDK through the libvixDiskLib double (native/,
 * pointed at the lab's datastore) when it is built or can be, and the lab's NBD view command
 * (lab/nbd-view.sh) for the nbd transport.
 */
async function demoTransports(lab: Lab, dir: string, say: (m: string) => void): Promise<TransportSettings> {
  const t: TransportSettings = {
    nbdDir: join(dir, 'connector', 'nbd'),
    nbdCommand: ['bash', join(PROJECT_ROOT, 'lab', 'nbd-view.sh'), lab.dir, '{socket}', '{vm}', '{snapshot}', '{diskKey}'],
  };
  const libdir = join(PROJECT_ROOT, 'native', 'build', 'vddk-double');
  if (!existsSync(libdir)) await run(join(PROJECT_ROOT, 'native', 'build.sh')).catch(() => undefined);
  if (!existsSync(libdir)) {
    say('   (no libvixDiskLib double built: native/build.sh failed; auto reads through NBD)');
    return t;
  }
  // The double serves the lab's point-in-time view of (VM, snapshot, disk path) from the lab's map, and checks the lab's credentials.
  await mkdir(join(dir, 'connector'), { recursive: true });
  const vddkConfigFile = join(dir, 'connector', 'vddk.conf');
  await writeFile(vddkConfigFile, `lab_map=${lab.vddkMapFile}\n`, { mode: 0o600 });
  return { ...t, vddkLibdir: libdir, vddkConfigFile };
}

type CycleFn = (label: string, action: () => void, onVm: ReturnType<Lab['vm']>, onJob: string) => Promise<void>;

/**
 * The real guest: the lab's Debian VM synced by a job (full, two incrementals after file writes in the
 * guest, complete with a last write), its final image converted for KVM with a first-boot command that
 * prints the last cycle's marker file to the serial console, then booted in QEMU: the boot passes only
 * when the login prompt and that marker both reach the console.
 */
async function guestPart(lab: Lab, engine: JobEngine, store: ImageStore, dir: string, say: (m: string) => void, cycle: CycleFn) {
  const gvm = lab.vm('guest-debian');
  const jobId = 'demo-guest';
  const markerPath = '/var/lib/vmlift-demo/marker';
  const token = randomBytes(4).toString('hex');
  engine.createJob({ id: jobId, name: gvm.name, vmRef: gvm.moref, settings: resolveSettings({ maxImages: 5, checksum: true }) });
  say(`== ${gvm.name} (a real Debian guest, ${formatBytes(gvm.disks[0]!.capacity)} disk): cycle 1, full sync`);
  await cycle('cycle 1', () => engine.start(jobId), gvm, jobId);
  const labels = ['cycle 2', 'cycle 3', 'final'];
  for (const label of labels) {
    say(`== writing ${markerPath} ("${label} ${token}") in the guest's filesystem, then ${label === 'final' ? 'complete: the final sync' : `${label}: incremental`}`);
    await lab.guestWrite(gvm.name, markerPath, `${label} ${token}\n`);
    await cycle(label, () => (label === 'final' ? engine.complete(jobId) : engine.requestSync(jobId)), gvm, jobId);
  }
  const state = engine.getJob(jobId).state;
  const imageId = engine.state.listCycles(jobId, 1)[0]!.imageId!;
  const converted = join(dir, 'converted', gvm.name);
  await mkdir(join(dir, 'converted'), { recursive: true });
  say(`== converting the final image ${imageId} for KVM (virt-v2v-in-place on an overlay; the stored image is not changed)`);
  const { convertImage } = await import('../../target/convert.ts');
  const t0 = Date.now();
  await convertImage(store, jobId, imageId, {
    to: 'kvm', output: converted,
    firstbootCommands: [`echo "vmlift-marker: $(cat ${markerPath})" > /dev/ttyS0`],
  });
  const convertSeconds = (Date.now() - t0) / 1000;
  say('== boot-testing the converted VM in QEMU (virtio disk and NIC; serial console): login prompt and the marker of the last cycle');
  const { bootTest } = await import('../../target/boot-test.ts');
  const boot = await bootTest(store, { sourceId: jobId, imageId, converted, timeoutSec: 900, reportDir: join(dir, 'boot', gvm.name), expect: `vmlift-marker: final ${token}` });
  return { vm: gvm.name, jobId, state, imageId, converted, convertSeconds, lastCycle: labels[labels.length - 1]!, boot };
}

export function register(program: Command): void {
  program.command('demo')
    .description('run vmlift\'s main job end to end on the lab vCenter and a local receiver, and verify every image')
    .option('--dir <dir>', 'work folder (emptied first)', join(tmpdir(), 'vmlift-demo'))
    .option('--disk-mib <n>', 'size of the first disk in MiB (the second is half)', '256')
    .option('--no-guest', 'skip the real guest part (sync, convert and boot of the lab\'s Debian guest; needs root, loop devices and a Debian mirror once)')
    .option('--json', 'print the summary as JSON')
    .option('--verbose', 'log the engine to stderr')
    .action(async (o: { dir: string; diskMib: string; guest: boolean; json?: boolean; verbose?: boolean }) => {
      const dir = resolve(o.dir);
      const diskMb = Number(o.diskMib);
      if (!Number.isInteger(diskMb) || diskMb < 16 || diskMb > 65536) throw new UserError('BAD_FLAG', `--disk-mib must be 16..65536, got ${o.diskMib}`, 'pass e.g. --disk-mib 256');
      const say = (m: string) => { if (!o.json) process.stderr.write(`${m}\n`); };
      const logger = o.verbose ? createLogger({}, { component: 'demo' }) : silentLogger;
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true });

      say(`== starting the lab vCenter (govmomi simulator + CBT + snapshot views) in ${dir}/lab`);
      const { startLab } = await labModule();
      if (o.guest) say('== building (once, then cached) the lab\'s real Debian guest');
      const lab = await startLab({ dir: join(dir, 'lab'), vms: 0, diskMb, vddkMap: true, guest: o.guest });
      const cleanups: (() => Promise<unknown>)[] = [() => lab.stop()];
      try {
        say(`   ${lab.url} (thumbprint ${lab.thumbprint.slice(0, 23)}…)`);
        say(`== starting a local receiver in ${dir}/receiver`);
        const rx = await startReceiver({ dataDir: join(dir, 'receiver'), controlPort: 0, dataPort: 0, listen: '127.0.0.1', logger });
        cleanups.unshift(() => rx.close());
        say(`   control :${rx.controlPort}, data :${rx.dataPort}, fingerprint ${rx.fingerprint.slice(0, 16)}…`);

        const vm = lab.vm('two-disks');
        say(`== writing real data (documentation text + random, with holes) into ${vm.name}'s ${vm.disks.length} disks`);
        for (const d of vm.disks) await fillDisk(lab, vm.name, d.key, d.capacity, 0.4);

        const vc = await VCenter.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } });
        cleanups.unshift(() => vc.close());
        const port = vcenterService(vc);
        const transports = transportDiskOpener(vc, port, { user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } },
          await demoTransports(lab, dir, say), 2 * MiB, logger);
        cleanups.unshift(async () => { await transports.close(); shutdownVddk(); });
        const disks = new LimitedDiskOpener(transports, port.hostOf, { perHost: 8, overall: 32 }, { logger });
        const state = openStateStore(join(dir, 'connector', 'state.db'));
        cleanups.unshift(async () => state.close());
        const engine = new JobEngine({
          state, logger,
          connect: (job) => senderJobServices(port, disks, {
            receiver: `127.0.0.1:${rx.controlPort}`, fingerprint: rx.fingerprint, credentialFile: join(dir, 'connector', 'credentials', `${job.sourceId}.json`),
            activationCode: rx.createdCode?.code, sourceId: job.sourceId, sourceLabel: job.name,
            compression: job.settings.compression, bandwidthMbps: job.settings.bandwidthMbps, checksum: job.settings.checksum, logger,
          }),
        });
        const jobId = 'demo-two-disks';
        engine.createJob({ id: jobId, name: vm.name, vmRef: vm.moref, settings: resolveSettings({ maxImages: 5, checksum: true }) });

        const rows: Row[] = [];
        const cycle = async (label: string, action: () => void, onVm = vm, onJob = jobId) => {
          const expected = await Promise.all(onVm.disks.map((d) => sha256Of((off, len) => lab.read(onVm.name, d.key, off, len), d.capacity)));
          action();
          await engine.runNow(onJob);
          const job = engine.getJob(onJob);
          if (job.state === 'error') throw new UserError('DEMO_FAILED', `the ${label} failed in step ${job.error?.step}: ${job.error?.message}`, 'run again with --verbose');
          const c = state.listCycles(onJob, 1)[0]!;
          let verified = true;
          for (const [i, d] of onVm.disks.entries()) {
            const got = await sha256Of((off, len) => rx.store.readImage(onJob, c.imageId!, i, off, len), d.capacity);
            verified &&= got === expected[i];
          }
          const seconds = (Date.parse(c.endedAt!) - Date.parse(c.startedAt)) / 1000;
          const used = state.getDisks(onJob).map((d) => ({ disk: d.diskKey, transport: d.transport ?? null, reason: d.transportReason ?? null }));
          rows.push({ vm: onVm.name, cycle: label, kind: c.kind, changed: c.changedBytes, read: c.sourceBytesRead, wire: c.wireBytes, seconds, image: c.imageId!, verified, transports: used });
          say(`   ${label}: ${c.kind}, read ${formatBytes(c.sourceBytesRead)}, sent ${formatBytes(c.wireBytes)} in ${formatDuration(seconds)}, image ${c.imageId}: ${verified ? 'SHA-256 matches the snapshot' : 'MISMATCH'}`);
          for (const u of used) say(`     disk ${u.disk} read through ${u.transport ?? '?'}${u.reason ? ` (${u.reason})` : ''}`);
        };

        say('== cycle 1: preflight, enable CBT, full sync of the allocated areas');
        await cycle('cycle 1', () => engine.start(jobId));
        for (const n of [2, 3]) {
          say(`== guest writes (1% of each disk, scattered 64 KiB blocks), cycle ${n}: incremental`);
          for (const d of vm.disks) await scatteredWrites(lab, vm.name, d.key, d.capacity, 0.01);
          await cycle(`cycle ${n}`, () => engine.requestSync(jobId));
        }
        say('== last guest writes, services stopped; complete: one final sync');
        for (const d of vm.disks) await scatteredWrites(lab, vm.name, d.key, d.capacity, 0.002);
        await cycle('final', () => engine.complete(jobId));
        const job = engine.getJob(jobId);

        say('== exporting the final images to qcow2 and checking them against the VM\'s disks');
        const finalImage = rows[rows.length - 1]!.image;
        const exports: { disk: number; path: string; sha256: string; matches: boolean; size: number }[] = [];
        for (const [i, d] of vm.disks.entries()) {
          const path = join(dir, 'exports', `${vm.name}-disk${i}.qcow2`);
          await mkdir(join(dir, 'exports'), { recursive: true });
          await rx.store.export(jobId, finalImage, i, 'qcow2', path);
          const raw = `${path}.check.raw`;
          await run('qemu-img', ['convert', '-O', 'raw', path, raw]);
          const sha = await fileSha(raw);
          await rm(raw, { force: true });
          const live = await sha256Of((off, len) => lab.read(vm.name, d.key, off, len), d.capacity);
          exports.push({ disk: i, path, sha256: sha, matches: sha === live, size: (await stat(path)).size });
        }
        const guest = o.guest ? await guestPart(lab, engine, rx.store, dir, say, (label, action, onVm, onJob) => cycle(label, action, onVm, onJob)) : null;
        const snapshotsLeft = (await vc.snapshots(vm.moref)).snapshots.length + (guest ? (await vc.snapshots(lab.vm('guest-debian').moref)).snapshots.length : 0);
        const ok = rows.every((r) => r.verified) && exports.every((e) => e.matches) && job.state === 'completed' && snapshotsLeft === 0
          && (!guest || (guest.state === 'completed' && guest.boot.passed && guest.boot.expected?.line != null));
        const summary = { ok, job: { id: jobId, vm: vm.name, state: job.state }, cycles: rows, exports, guest, snapshotsLeft, receiverStore: join(dir, 'receiver', 'store') };
        printResult(o.json, summary, (s) => [
          '',
          table(['VM', 'CYCLE', 'KIND', 'CHANGED', 'READ', 'SENT', 'TIME', 'TRANSPORT', 'IMAGE', 'SHA-256 vs SNAPSHOT'],
            s.cycles.map((r) => [r.vm, r.cycle, r.kind, formatBytes(r.changed), formatBytes(r.read), formatBytes(r.wire), formatDuration(r.seconds),
              r.transports.map((u) => `${u.disk}:${u.transport ?? '?'}`).join(' '), r.image, r.verified ? 'match' : 'MISMATCH'])),
          '',
          table(['DISK', 'QCOW2', 'SIZE', 'SHA-256 (raw)', 'vs VM DISK'], s.exports.map((e) => [e.disk, e.path, formatBytes(e.size), e.sha256.slice(0, 16), e.matches ? 'match' : 'MISMATCH'])),
          '',
          ...(s.guest ? [
            '',
            `guest ${s.guest.vm} (job ${s.guest.jobId}: ${s.guest.state}): final image ${s.guest.imageId} converted for KVM in ${formatDuration(s.guest.convertSeconds)} (${s.guest.converted})`,
            s.guest.boot.passed
              ? `booted: login reached in ${s.guest.boot.secondsToLogin} s (${s.guest.boot.accel}); marker of cycle ${s.guest.lastCycle} present: "${s.guest.boot.expected?.line}"`
              : `boot FAILED: ${s.guest.boot.failure?.code}: ${s.guest.boot.failure?.message}`,
            `console screenshot: ${s.guest.boot.screenshot ?? 'none'}`,
          ] : []),
          `job ${s.job.id}: ${s.job.state}; snapshots left on the VMs: ${s.snapshotsLeft}; images in ${s.receiverStore}`,
          s.ok ? 'demo: OK' : 'demo: FAILED',
        ].join('\n'));
        if (!ok) process.exitCode = 1;
      } finally {
        for (const c of cleanups) await c().catch(() => undefined);
      }
    });
}
