/**
 * Target-side benchmark (issue 13), on the lab's real Debian guest synced by a job into a receiver
 * (test/engine/harness.ts: the lab with its cached guest, an in-process receiver with the real drill
 * steps, the agentless engine in this process):
 *
 *   node --import tsx bench/target.ts [--write-mib 32] [--alone 2] [--only commands,drill] [--json]
 *
 * 1. `vmlift image inspect`, `image convert --to kvm` and `image boot-test --converted` of the synced
 *    image, each as a child process: wall seconds, CPU seconds (user+sys) and peak RSS of its whole
 *    process tree (bench/lib/proc-tree.ts: VmRSS summed over the tree every 0.5 s, the maximum; the
 *    guestfish daemon and appliances it detaches are followed by their command lines), under TCG; under
 *    KVM too when the accelerator probe says KVM runs a guest (here it mostly does not: printed).
 * 2. An incremental cycle after a change of --write-mib MiB (scattered 64 KiB block writes on the live
 *    disk): --alone times on its own, then once during each step of a drill (inspect, convert with
 *    virt-v2v running, boot) of the same job: wall seconds, the ratio beside/alone, and the cycle's CPU
 *    (this process: engine and receiver; the lab: the vCenter double serving the reads). The drill's
 *    CPU: its whole process tree (appliances, virt-v2v, QEMU) and, estimated, its in-process part
 *    (exports through the store).
 * A report, not pass or fail. About 20 minutes under TCG on 2 cores.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { startRig, settings, guestWrites, MiB } from '../test/engine/harness.ts';
import { JobDrills } from '../src/engine/drills.ts';
import { chooseAccel } from '../src/target/accel-probe.ts';
import { silentLogger } from '../src/util/log.ts';
import type { DrillReport } from '../src/transfer/contract.ts';
import type { BootTestReport } from '../src/target/boot-test.ts';
import type { ConvertManifest } from '../src/target/convert-manifest.ts';
import { TreeMeter, processSeconds, type TreeFigures, type TreeSample } from './lib/proc-tree.ts';

const { values } = parseArgs({
  options: {
    'write-mib': { type: 'string', default: '32' },
    alone: { type: 'string', default: '2' },
    only: { type: 'string', default: 'commands,drill' },
    json: { type: 'boolean', default: false },
  },
  strict: false,
});
const WRITE_MIB = Number(values['write-mib']);
const ALONE = Math.max(1, Math.min(6, Number(values.alone)));
const ONLY = new Set(String(values.only).split(','));
const VMLIFT = fileURLToPath(new URL('../bin/vmlift', import.meta.url));
const say = (m: string) => { if (!values.json) process.stderr.write(`${m}\n`); };
const load = () => loadavg().map((x) => x.toFixed(1)).join(' ');
const rows: Record<string, unknown>[] = [];

interface CliRun { code: number; out: string; err: string; wall: number; tree: TreeFigures }

/**
 * The CLI as a child with the tree meter on it; `needles` name the folders its detached processes use.
 * Past `timeoutSec` it gets SIGTERM (it then ends its appliance or QEMU and cleans up).
 */
function vmlift(args: string[], needles: string[], env: NodeJS.ProcessEnv, timeoutSec: number): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const p = spawn(VMLIFT, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMLIFT_FROM_SOURCE: '1', ...env } });
    const meter = new TreeMeter({ roots: () => (p.pid ? [p.pid] : []), needles });
    const timer = setTimeout(() => { say(`   timed out after ${timeoutSec} s: SIGTERM`); p.kill('SIGTERM'); }, timeoutSec * 1000);
    let out = '', err = '';
    p.stdout.on('data', (d: Buffer) => { out += d; });
    p.stderr.on('data', (d: Buffer) => { err += d; });
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(timer);
      // The detached appliance may outlive the CLI for a moment: one more sample after it ended.
      setTimeout(() => resolve({ code: code ?? -1, out, err, wall: (Date.now() - t0) / 1000, tree: meter.stop() }), 1000);
    });
  });
}

const fmt = (n: number | null | undefined, d = 1) => (n === null || n === undefined || Number.isNaN(n) ? '—' : n.toFixed(d));
const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2; };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const started = new Date();
  say(`== target benchmark, ${started.toISOString()}, load average ${load()}`);
  const accel = await chooseAccel();
  say(`accelerator probe: ${accel.accel} (${accel.reason})`);

  say('== lab with the real Debian guest (built once, cached), receiver with drill steps, full cycle');
  const rig = await startRig({ guest: true, drills: true });
  const work = await mkdtemp(join(tmpdir(), 'vmlift-bench-target-'));
  // Every child of the measured steps keeps its temporary files (so its command line) under `scratch`.
  const scratch = join(work, 'tmp');
  await mkdir(scratch);
  try {
    const { lab, engine, rx, state } = rig;
    const vm = lab.vm('guest-debian');
    const disk = vm.disks[0]!;
    // Up to 10 images: the drill takes the full cycle's image, kept until it is pinned.
    engine.createJob({ id: 'guest', vmRef: vm.moref, settings: settings({ maxImages: 10 }) });
    engine.start('guest');
    let t0 = Date.now();
    await engine.runNow('guest');
    const job = engine.getJob('guest');
    if (job.state !== 'waiting') throw new Error(`the full cycle failed: ${JSON.stringify(job.error)}`);
    const c1 = state.listCycles('guest', 1)[0]!;
    say(`full cycle of the ${disk.capacity / MiB} MiB disk: ${((Date.now() - t0) / 1000).toFixed(1)} s, ${(c1.sourceBytesRead / MiB).toFixed(0)} MiB read`);
    const dataDir = join(rx.dir, 'rx');
    const common = ['--data-dir', dataDir, '--source', job.sourceId, '--image', c1.imageId!];
    const env = { TMPDIR: scratch };

    const cli = async (name: string, accelName: string, args: string[], timeoutSec: number, extraEnv: NodeJS.ProcessEnv = {}, needles: string[] = []) => {
      say(`== ${name} (${accelName}), load average ${load()}`);
      const r = await vmlift(args, [scratch, ...needles], { ...env, ...extraEnv }, timeoutSec);
      say(`   exit ${r.code}, ${r.wall.toFixed(1)} s, CPU ${r.tree.cpuSeconds.toFixed(1)} s, peak RSS ${r.tree.peakRssMiB} MiB; qemu -m: ${r.tree.qemuMemory.map((q) => `${q.what} ${q.memoryMiB}`).join(', ') || '—'}`);
      if (r.code !== 0) say(`   ${r.err.trim().split('\n').slice(-4).join('\n   ')}`);
      return r;
    };

    // 1. The three steps as commands.
    const runs: { accel: 'tcg' | 'kvm'; guestfsSettings: string }[] = [{ accel: 'tcg', guestfsSettings: 'force_tcg' }];
    if (accel.accel === 'kvm') runs.push({ accel: 'kvm', guestfsSettings: '' });
    else say(`KVM: not measured, the probe says it does not run a guest here (${accel.reason})`);
    let converted: string | null = null;
    for (const a of ONLY.has('commands') ? runs : []) {
      const ins = await cli('image inspect', a.accel, ['image', 'inspect', ...common, '--json'],
        a.accel === 'kvm' ? 300 : 1200, { LIBGUESTFS_BACKEND_SETTINGS: a.guestfsSettings });
      let verdict = '';
      try { verdict = (JSON.parse(ins.out) as { targets: { kvm: { verdict: string } } }).targets.kvm.verdict; } catch { /* printed below */ }
      rows.push({ step: 'inspect', accel: a.accel, exit: ins.code, seconds: ins.wall, cpuSeconds: ins.tree.cpuSeconds, peakRssMiB: ins.tree.peakRssMiB,
        note: `kvm verdict: ${verdict || '?'}; appliance -m ${ins.tree.qemuMemory.map((q) => q.memoryMiB).join('/') || '?'} MiB` });
      if (a.accel === 'kvm') {
        rows.push({ step: 'convert', accel: 'kvm', exit: null, seconds: null, cpuSeconds: null, peakRssMiB: null, note: 'not run under KVM (virt-v2v\'s appliance hangs under nested KVM here)' });
      } else {
        const out = join(work, 'converted');
        const cv = await cli('image convert --to kvm', a.accel, ['image', 'convert', ...common, '--to', 'kvm', '--output', out, '--json'], 2400, {}, [out]);
        let m: ConvertManifest | null = null;
        try { m = JSON.parse(cv.out) as ConvertManifest; converted = out; } catch { /* failed */ }
        rows.push({ step: 'convert', accel: a.accel, exit: cv.code, seconds: cv.wall, cpuSeconds: cv.tree.cpuSeconds, peakRssMiB: cv.tree.peakRssMiB,
          note: m ? `virt-v2v-in-place ${m.v2v.seconds.toFixed(0)} s; appliances -m ${cv.tree.qemuMemory.map((q) => q.memoryMiB).join('/')} MiB` : 'failed' });
      }
      if (!converted) { rows.push({ step: 'boot-test', accel: a.accel, note: 'no converted folder' }); continue; }
      const bt = await cli('image boot-test --converted', a.accel, ['image', 'boot-test', ...common, '--converted', converted, '--accel', a.accel,
        '--timeout', a.accel === 'kvm' ? '240' : '900', '--report-dir', join(work, `boot-${a.accel}`), '--json'], 1200);
      let rep: BootTestReport | null = null;
      try { rep = JSON.parse(bt.out) as BootTestReport; } catch { /* failed */ }
      rows.push({ step: 'boot-test', accel: a.accel, exit: bt.code, seconds: bt.wall, cpuSeconds: bt.tree.cpuSeconds, peakRssMiB: bt.tree.peakRssMiB,
        note: rep ? (rep.passed ? `login prompt ${fmt(rep.secondsToLogin)} s after QEMU's start; guest -m ${rep.memoryMiB} MiB, ${rep.cpus} CPUs; QEMU VmHWM ${rep.qemuPeakRssMiB} MiB`
          : `${rep.failure?.code}: ${rep.failure?.message}`) : 'no report' });
    }

    // 2. Incremental cycles of the same size, alone, then beside a drill.
    const cycle = async (label: string) => {
      await guestWrites(lab, vm.name, disk.key, disk.capacity, WRITE_MIB * 16, 64 * 1024);
      const cpu0 = process.cpuUsage(), lab0 = processSeconds(lab.pid), w0 = Date.now();
      await engine.runNow('guest');
      const wall = (Date.now() - w0) / 1000;
      const cu = process.cpuUsage(cpu0);
      const c = state.listCycles('guest', 1)[0]!;
      if (c.state !== 'committed') throw new Error(`cycle ${label} failed: ${c.error ?? JSON.stringify(engine.getJob('guest').error)}`);
      const r = { label, wall, cpuVmlift: (cu.user + cu.system) / 1e6, cpuLab: processSeconds(lab.pid) - lab0, readMiB: c.sourceBytesRead / MiB, changedMiB: c.changedBytes / MiB, load: loadavg()[0]! };
      say(`   cycle ${label}: ${wall.toFixed(2)} s, ${r.readMiB.toFixed(1)} MiB read, CPU ${r.cpuVmlift.toFixed(2)} s (vmlift) + ${r.cpuLab.toFixed(2)} s (lab), load ${r.load.toFixed(1)}`);
      return r;
    };
    say(`== incremental cycles alone (${WRITE_MIB} MiB of scattered 64 KiB writes before each), load average ${load()}`);
    const alone = [];
    for (let i = 0; i < ALONE; i++) alone.push(await cycle(`alone ${i + 1}`));

    const aloneWall = median(alone.map((a) => a.wall));
    if (!ONLY.has('drill')) { print(started, accel, alone.map((c) => ({ ...c, ratio: c.wall / aloneWall })), aloneWall); return; }
    // The block writes above land anywhere on the disk, the guest's filesystem included: the drill takes
    // the full cycle's image, whose guest is intact (as `job drill --image N`).
    say(`== a drill of image ${c1.imageId} (the full cycle's) with a cycle during each of its steps, load average ${load()}`);
    const drills = new JobDrills({ state, service: rig.drillService, reportRoot: join(work, 'drill-home'), logger: silentLogger, pollMs: 1000 });
    let last: TreeSample = { procs: [] };
    const meter = new TreeMeter({ roots: () => [process.pid], needles: [scratch, rx.dir], exclude: [lab.pid], onSample: (s) => { last = s; } });
    const prevTmp = process.env.TMPDIR;
    process.env.TMPDIR = scratch; // the drill steps' temporary folders (os.tmpdir())
    const self0 = process.cpuUsage();
    const d0 = Date.now();
    const rec = await drills.start('guest', c1.imageId!);
    const beside: (Awaited<ReturnType<typeof cycle>> & { phase: string })[] = [];
    const has = (re: RegExp) => last.procs.some((p) => re.test(p.cmd));
    const phases: { name: string; steps: number; ready: () => boolean }[] = [
      { name: 'inspect', steps: 0, ready: () => has(/qemu-system/) },
      { name: 'convert (virt-v2v)', steps: 1, ready: () => has(/virt-v2v-in-place/) && has(/qemu-system/) },
      { name: 'boot', steps: 2, ready: () => has(/qemu-system.*vmlift-boot-test/) },
    ];
    let report: DrillReport = rec.report as unknown as DrillReport;
    for (const ph of phases) {
      for (;;) {
        report = await rig.drillService.get(job.sourceId, rec.id);
        if (report.state === 'passed' || report.state === 'abnormal' || report.steps.length > ph.steps) break;
        if (report.steps.length === ph.steps && report.state === 'running' && ph.ready()) break;
        await sleep(500);
      }
      if (report.state === 'passed' || report.state === 'abnormal' || report.steps.length > ph.steps) { say(`   (the drill was past ${ph.name} before a cycle could run beside it)`); continue; }
      // Let the step settle (the appliance or guest booting) before the cycle.
      await sleep(5000);
      beside.push({ ...(await cycle(`beside the drill's ${ph.name}`)), phase: ph.name });
    }
    const done = await drills.wait(rec.id);
    const drillWall = (Date.now() - d0) / 1000;
    await sleep(1500);
    const tree = meter.stop();
    const selfCu = process.cpuUsage(self0);
    process.env.TMPDIR = prevTmp;
    await drills.close();
    const r = done.report as unknown as DrillReport;
    const selfSeconds = (selfCu.user + selfCu.system) / 1e6;
    const inProcess = selfSeconds - beside.reduce((s, b) => s + b.cpuVmlift, 0);
    say(`   drill: ${r.verdict} in ${drillWall.toFixed(0)} s (${r.steps.map((s) => `${s.step} ${s.seconds.toFixed(0)} s`).join(', ')}); tree CPU ${tree.cpuSeconds.toFixed(1)} s, peak RSS ${tree.peakRssMiB} MiB`);
    if (r.failure) say(`   drill failure: ${r.failure.step}: ${r.failure.code}: ${r.failure.message}\n   ${r.consoleTail.slice(-5).join('\n   ')}`);
    rows.push({ step: 'drill (inspect + convert + boot)', accel: r.accel ?? 'tcg', exit: r.verdict, seconds: drillWall, cpuSeconds: tree.cpuSeconds, peakRssMiB: tree.peakRssMiB,
      note: `${r.failure ? `${r.failure.step} ${r.failure.code}: ${r.failure.message.slice(0, 200)}; ` : ''}${r.steps.map((s) => `${s.step} ${s.seconds.toFixed(0)} s`).join(', ')}; login ${fmt(r.secondsToLogin)} s; CPU of its processes (${tree.daemonCpuSeconds.toFixed(0)} s of it detached daemons, sampled) + ≈${inProcess.toFixed(1)} s in the receiver process (exports); qemu -m ${tree.qemuMemory.map((q) => `${q.what === 'libguestfs appliance' ? 'appliance' : 'boot'} ${q.memoryMiB}`).join(', ')} MiB` });

    print(started, accel, [...alone.map((a) => ({ ...a, phase: 'alone' })), ...beside].map((c) => ({ ...c, ratio: c.wall / aloneWall })), aloneWall);
  } finally {
    await rig.close();
    await rm(work, { recursive: true, force: true });
  }
}

interface CycleRow { label: string; wall: number; ratio: number; readMiB: number; cpuVmlift: number; cpuLab: number; load: number }

function print(started: Date, accel: { accel: string; reason: string }, cycles: CycleRow[], aloneWall = 0): void {
  {
    const summary = { date: started.toISOString(), load: load(), accel, writeMiB: WRITE_MIB, rows, cycles };
    if (values.json) { process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`); return; }
    console.log(`\ntarget benchmark, ${started.toISOString()} (load average now ${load()}); ${accel.accel === 'kvm' ? 'KVM probe passed' : `KVM: ${accel.reason}`}`);
    console.log('peak RSS: VmRSS summed over the whole process tree every 0.5 s (detached guestfish daemons and appliances followed), maximum; CPU: user+sys of the tree');
    console.log('| step | accel | result | wall s | CPU s | peak RSS MiB | notes |');
    console.log('|---|---|---|---|---|---|---|');
    for (const x of rows) {
      console.log(`| ${x.step} | ${x.accel} | ${x.exit ?? '—'} | ${fmt(x.seconds as number)} | ${fmt(x.cpuSeconds as number)} | ${x.peakRssMiB ?? '—'} | ${x.note ?? ''} |`);
    }
    console.log(`\nincremental cycle after ${WRITE_MIB} MiB of scattered 64 KiB writes (median alone: ${aloneWall.toFixed(2)} s)`);
    console.log('| cycle | wall s | × alone | read MiB | CPU vmlift s | CPU lab s | load |');
    console.log('|---|---|---|---|---|---|---|');
    for (const c of summary.cycles) console.log(`| ${c.label} | ${c.wall.toFixed(2)} | ${c.ratio.toFixed(2)} | ${c.readMiB.toFixed(1)} | ${c.cpuVmlift.toFixed(2)} | ${c.cpuLab.toFixed(2)} | ${c.load.toFixed(1)} |`);
  }
}

await main();
