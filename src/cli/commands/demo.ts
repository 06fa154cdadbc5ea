/**
 * `vmlift demo`: vmlift's main job end to end on an embedded default. The lab vCenter (govmomi's
 * simulator with disks, CBT and snapshot views), a local receiver, the agentless engine in this
 * process: full cycle, guest writes, two incremental cycles, complete (final sync), export of the
 * final images to qcow2, and a SHA-256 check of every image against the VM's disks at its snapshot.
 * The job's transport is `auto` (VDDK through the libvixDiskLib double); the demo says which each disk used.
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
  cycle: string; kind: string; changed: number; read: number; wire: number; seconds: number; image: string; verified: boolean;
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

export function register(program: Command): void {
  program.command('demo')
    .description('run vmlift\'s main job end to end on the lab vCenter and a local receiver, and verify every image')
    .option('--dir <dir>', 'work folder (emptied first)', join(tmpdir(), 'vmlift-demo'))
    .option('--disk-mib <n>', 'size of the first disk in MiB (the second is half)', '256')
    .option('--json', 'print the summary as JSON')
    .option('--verbose', 'log the engine to stderr')
    .action(async (o: { dir: string; diskMib: string; json?: boolean; verbose?: boolean }) => {
      const dir = resolve(o.dir);
      const diskMb = Number(o.diskMib);
      if (!Number.isInteger(diskMb) || diskMb < 16 || diskMb > 65536) throw new UserError('BAD_FLAG', `--disk-mib must be 16..65536, got ${o.diskMib}`, 'pass e.g. --disk-mib 256');
      const say = (m: string) => { if (!o.json) process.stderr.write(`${m}\n`); };
      const logger = o.verbose ? createLogger({}, { component: 'demo' }) : silentLogger;
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true });

      say(`== starting the lab vCenter (govmomi simulator + CBT + snapshot views) in ${dir}/lab`);
      const { startLab } = await labModule();
      const lab = await startLab({ dir: join(dir, 'lab'), vms: 0, diskMb, vddkMap: true });
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
        const cycle = async (label: string, action: () => void) => {
          const expected = await Promise.all(vm.disks.map((d) => sha256Of((off, len) => lab.read(vm.name, d.key, off, len), d.capacity)));
          action();
          await engine.runNow(jobId);
          const job = engine.getJob(jobId);
          if (job.state === 'error') throw new UserError('DEMO_FAILED', `the ${label} failed in step ${job.error?.step}: ${job.error?.message}`, 'run again with --verbose');
          const c = state.listCycles(jobId, 1)[0]!;
          let verified = true;
          for (const [i, d] of vm.disks.entries()) {
            const got = await sha256Of((off, len) => rx.store.readImage(jobId, c.imageId!, i, off, len), d.capacity);
            verified &&= got === expected[i];
          }
          const seconds = (Date.parse(c.endedAt!) - Date.parse(c.startedAt)) / 1000;
          const used = state.getDisks(jobId).map((d) => ({ disk: d.diskKey, transport: d.transport ?? null, reason: d.transportReason ?? null }));
          rows.push({ cycle: label, kind: c.kind, changed: c.changedBytes, read: c.sourceBytesRead, wire: c.wireBytes, seconds, image: c.imageId!, verified, transports: used });
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
        const snapshotsLeft = (await vc.snapshots(vm.moref)).snapshots.length;
        const ok = rows.every((r) => r.verified) && exports.every((e) => e.matches) && job.state === 'completed' && snapshotsLeft === 0;
        const summary = { ok, job: { id: jobId, vm: vm.name, state: job.state }, cycles: rows, exports, snapshotsLeft, receiverStore: join(dir, 'receiver', 'store') };
        printResult(o.json, summary, (s) => [
          '',
          table(['CYCLE', 'KIND', 'CHANGED', 'READ', 'SENT', 'TIME', 'TRANSPORT', 'IMAGE', 'SHA-256 vs SNAPSHOT'],
            s.cycles.map((r) => [r.cycle, r.kind, formatBytes(r.changed), formatBytes(r.read), formatBytes(r.wire), formatDuration(r.seconds),
              r.transports.map((u) => `${u.disk}:${u.transport ?? '?'}`).join(' '), r.image, r.verified ? 'match' : 'MISMATCH'])),
          '',
          table(['DISK', 'QCOW2', 'SIZE', 'SHA-256 (raw)', 'vs VM DISK'], s.exports.map((e) => [e.disk, e.path, formatBytes(e.size), e.sha256.slice(0, 16), e.matches ? 'match' : 'MISMATCH'])),
          '',
          `job ${s.job.id}: ${s.job.state}; snapshots left on the VM: ${s.snapshotsLeft}; images in ${s.receiverStore}`,
          s.ok ? 'demo: OK' : 'demo: FAILED',
        ].join('\n'));
        if (!ok) process.exitCode = 1;
      } finally {
        for (const c of cleanups) await c().catch(() => undefined);
      }
    });
}
