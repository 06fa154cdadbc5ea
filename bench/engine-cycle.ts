/**
 * Agentless engine benchmark (issue 5), against the lab vCenter, with the receiver as a child process.
 *
 *   node --import tsx bench/engine-cycle.ts [--size 8] [--variants nbd:0,nbd:7,http:7,vddk:0,vddk:7] [--checksum] [--wg-vms 50] [--wg-disk-mib 64]
 *     [--host-disks 8] [--host-disk-mib 256] [--json]
 *
 * 1. A lab VM with a SIZE GiB disk full of data: full cycle (MB/s), then 1% scattered 64 KiB guest
 *    writes and an incremental cycle: wall time as a fraction of the full cycle (target <= 5%),
 *    source bytes read / changed bytes (target <= 1.2), wire bytes / changed bytes; CPU seconds per
 *    GiB of the full cycle, of this process (the connector) and of the receiver (`--checksum`: with
 *    checksum verification on).
 *    Peer in the same run: nbdcopy of the same snapshot disk from the lab's nbdkit export into a
 *    local file; ratio ours / nbdcopy for the full cycle. Variants TRANSPORT:LEVEL: nbd (the lab's nbdkit
 *    export), http (datastore Range GETs), vddk (the libvixDiskLib double, native/, on the lab's
 *    datastore) at compression LEVEL; each reports connector CPU s per GiB and its ratio to nbd.
 * 2. A workgroup of --wg-vms VMs: a full and an incremental cycle of all; total time and peak RSS of
 *    this process, which plays the connector (target <= 512 MiB).
 * 3. --host-disks N (default 8, 0 skips) disks of --host-disk-mib MiB on VMs of ONE lab host, full cycle
 *    of all at once through one engine (per-host disk limit as the connector's default), vddk then nbd:
 *    aggregate MB/s and peak RSS of this process (sampled every 100 ms).
 * Not part of the test suite.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, rm, open, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { startLab, type Lab } from '../lab/lab.ts';
import { VCenter } from '../src/vsphere/index.ts';
import { vcenterService, httpDiskOpener, senderJobServices, transportDiskOpener } from '../src/cli/wiring.ts';
import { shutdownVddk } from '../src/source/vddk/index.ts';
import { PROJECT_ROOT } from '../src/util/root.ts';
import { LimitedDiskOpener } from '../src/engine/limits.ts';
import { JobEngine } from '../src/engine/jobs.ts';
import { Scheduler } from '../src/engine/scheduler.ts';
import { Workgroups } from '../src/engine/workgroups.ts';
import { resolveSettings } from '../src/engine/settings.ts';
import { openStateStore } from '../src/state/sqlite.ts';
import { openSource } from '../src/source/open.ts';
import type { DiskOpener } from '../src/engine/services.ts';
import { createLogger, silentLogger } from '../src/util/log.ts';
import { DEFAULT_LIMITS } from '../src/cli/connector-config.ts';

const execFileP = promisify(execFile);
const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '8' },
    'wg-vms': { type: 'string', default: '50' },
    variants: { type: 'string', default: 'nbd:0,nbd:7,http:7,vddk:0,vddk:7' },
    'wg-disk-mib': { type: 'string', default: '64' },
    'host-disks': { type: 'string', default: '8' },
    'host-disk-mib': { type: 'string', default: '256' },
    checksum: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  },
  strict: false,
});
const MiB = 2 ** 20;
const GiB = 2 ** 30;
const SIZE_MIB = Math.max(64, Math.round(Number(values.size) * 1024));
const WG_VMS = Number(values['wg-vms']);
const WG_MIB = Number(values['wg-disk-mib']);
const HOST_DISKS = Number(values['host-disks']);
const HOST_MIB = Number(values['host-disk-mib']);
const VMLIFT = fileURLToPath(new URL('../bin/vmlift', import.meta.url));

const results: Record<string, unknown> = {};
const out = (line: string) => { if (!values.json) console.log(line); };

async function startReceiverProcess(dir: string): Promise<{ p: ChildProcess; port: number; fingerprint: string; code: string }> {
  const p = spawn(VMLIFT, ['receiver', 'serve', '--data-dir', join(dir, 'rx'),
    '--listen', '127.0.0.1', '--control-port', '0', '--data-port', '0', '--json'], { stdio: ['ignore', 'pipe', 'ignore'] });
  let buf = '';
  return new Promise((resolve, reject) => {
    p.stdout!.on('data', (b) => {
      buf += b;
      const line = buf.split('\n').find((l) => l.includes('"fingerprint"'));
      if (line) {
        const j = JSON.parse(line);
        resolve({ p, port: j.controlPort, fingerprint: j.fingerprint, code: j.code ?? j.activationCode?.code });
      }
    });
    p.once('exit', (c) => reject(new Error(`receiver exited ${c}: ${buf}`)));
  });
}

/** CPU seconds (user + system) a process has used so far (Linux /proc). */
async function cpuSecondsOf(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

async function fillFlat(path: string, bytes: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    for (let off = 0; off < bytes; off += 8 * MiB) await fh.write(randomBytes(Math.min(8 * MiB, bytes - off)), 0, undefined, off);
  } finally { await fh.close(); }
}

/** NBD transport with the lab as the export provider (where production puts `nbdkit vddk` in front of VMware). */
function labNbdOpener(lab: Lab): DiskOpener {
  return {
    async open(vmRef, snapshot, disk) {
      const vm = lab.vms.find((v) => v.moref === vmRef)!;
      return openSource((await lab.nbdExport(vm.name, snapshot.ref, disk.key)).uri);
    },
  };
}

// VMLIFT_BENCH_LOG=debug (or info): the engine's log on stderr, to see where a cycle spends its time
const engineLogger = process.env.VMLIFT_BENCH_LOG ? createLogger({ level: process.env.VMLIFT_BENCH_LOG }) : silentLogger;

type BenchTransport = 'http' | 'nbd' | 'vddk';

/** VDDK through the libvixDiskLib double (native/build/vddk-double), pointed at the lab's datastore. */
async function vddkOpener(lab: Lab, vc: VCenter, port: ReturnType<typeof vcenterService>, dir: string): Promise<DiskOpener> {
  await execFileP(join(PROJECT_ROOT, 'native', 'build.sh'));
  await mkdir(dir, { recursive: true });
  const vddkConfigFile = join(dir, 'vddk.conf');
  await writeFile(vddkConfigFile, `lab_map=${lab.vddkMapFile}\n`, { mode: 0o600 });
  return transportDiskOpener(vc, port, { user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } }, {
    vddkLibdir: join(PROJECT_ROOT, 'native', 'build', 'vddk-double'), vddkConfigFile, nbdDir: join(dir, 'nbd'),
  }, 2 * MiB, silentLogger);
}

async function makeEngine(lab: Lab, vc: VCenter, rx: { port: number; fingerprint: string; code: string }, dir: string, transport: BenchTransport = 'http') {
  const port = vcenterService(vc);
  const inner = transport === 'nbd' ? labNbdOpener(lab) : transport === 'vddk' ? await vddkOpener(lab, vc, port, dir)
    : httpDiskOpener(vc, port, { thumbprint: lab.thumbprint }, 2 * MiB, silentLogger);
  const disks = new LimitedDiskOpener(inner, port.hostOf, { perHost: DEFAULT_LIMITS.disksPerHost, overall: DEFAULT_LIMITS.disksOverall });
  const state = openStateStore(join(dir, 'state.db'));
  const engine = new JobEngine({
    state, logger: engineLogger,
    connect: (job) => senderJobServices(port, disks, {
      receiver: `127.0.0.1:${rx.port}`, fingerprint: rx.fingerprint, credentialFile: join(dir, 'cred', `${job.sourceId}.json`), activationCode: rx.code,
      sourceId: job.sourceId, compression: job.settings.compression, bandwidthMbps: 0, checksum: job.settings.checksum,
    }),
  });
  return { engine, state };
}

async function cycleOne(dir: string, transport: BenchTransport, compression: number): Promise<void> {
  dir = join(dir, `${transport}-${compression}`);
  const rx = await startReceiverProcess(dir);
  const labDir = join(dir, 'lab1');
  const lab1 = await startLab({ dir: labDir, vms: 1, diskMb: SIZE_MIB, vddkMap: true });
  const vc = await VCenter.connect({ server: lab1.url, user: lab1.user, password: lab1.password, trust: { thumbprint: lab1.thumbprint } });
  try {
    const vm = lab1.vm('vm-0001');
    const d = vm.disks[0]!;
    await fillFlat(d.flatPath, d.capacity);
    const { engine, state } = await makeEngine(lab1, vc, rx, join(dir, 'c1'), transport);
    engine.createJob({ id: 'big', vmRef: vm.moref, settings: resolveSettings({ compression, checksum: values.checksum === true, transport }) });
    engine.start('big');
    const cpu0 = process.cpuUsage();
    const rxCpu0 = await cpuSecondsOf(rx.p.pid!);
    let t0 = process.hrtime.bigint();
    const mem = setInterval(() => { const m = process.memoryUsage(); if (process.env.VMLIFT_BENCH_MEM) console.error(`rss ${(m.rss / MiB).toFixed(0)} heap ${(m.heapUsed / MiB).toFixed(0)} ext ${(m.external / MiB).toFixed(0)} ab ${(m.arrayBuffers / MiB).toFixed(0)}`); }, 2000);
    await engine.runNow('big');
    clearInterval(mem);
    const fullS = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    const connectorCpuPerGiB = (cpu.user + cpu.system) / 1e6 / (d.capacity / GiB);
    const receiverCpuPerGiB = ((await cpuSecondsOf(rx.p.pid!)) - rxCpu0) / (d.capacity / GiB);
    const full = state.listCycles('big', 1)[0]!;
    const used = state.getDisks('big').map((x) => x.transport);
    if (transport === 'vddk' && used.some((u) => u !== 'vddk')) throw new Error(`the ${transport} variant read through ${used.join(', ')}`);
    if (full.state !== 'committed') throw new Error(`full cycle failed: ${JSON.stringify(engine.getJob('big').error)}`);

    // Peer: nbdcopy of a snapshot of the same disk from the lab's nbdkit export into a local file.
    const snap = await vc.createSnapshot(vm.moref, 'bench-peer', { quiesce: false });
    const nbd = await lab1.nbdExport(vm.name, snap.ref, d.key);
    const peerOut = join(dir, 'peer.raw');
    t0 = process.hrtime.bigint();
    await execFileP('nbdcopy', [nbd.uri, peerOut]);
    const peerS = Number(process.hrtime.bigint() - t0) / 1e9;
    await rm(peerOut, { force: true });
    await vc.removeSnapshot(vm.moref, snap.ref);

    const block = 64 * 1024;
    const count = Math.round((d.capacity * 0.01) / block);
    const seen = new Set<number>();
    for (let i = 0; i < count; i++) {
      let b: number;
      do b = Math.floor(Math.random() * (d.capacity / block)); while (seen.has(b));
      seen.add(b);
      await lab1.write(vm.name, d.key, b * block, randomBytes(block));
    }
    const changed = count * block;
    engine.requestSync('big');
    t0 = process.hrtime.bigint();
    await engine.runNow('big');
    const incS = Number(process.hrtime.bigint() - t0) / 1e9;
    const inc = state.listCycles('big', 1)[0]!;
    state.close();
    const r = {
      transport, compression, diskGiB: d.capacity / GiB, fullSeconds: fullS, fullMBps: d.capacity / 1e6 / fullS, cpuSecondsPerGiB: connectorCpuPerGiB, nbdcopySeconds: peerS, nbdcopyMBps: d.capacity / 1e6 / peerS,
      ratioVsNbdcopy: peerS / fullS, incSeconds: incS, incFractionOfFull: incS / fullS, changedBytes: changed,
      cbtReportedBytes: inc.changedBytes, sourceReadPerChanged: inc.sourceBytesRead / changed, wirePerChanged: inc.wireBytes / changed,
      checksum: values.checksum === true, receiverCpuPerGiB,
    };
    results[`cycle-${transport}-c${compression}`] = r;
    out(`engine cycle, ${r.diskGiB.toFixed(2)} GiB disk full of random data, compression ${compression}, ${transport} transport:`);
    out(`  full cycle          ${fullS.toFixed(1)} s  ${r.fullMBps.toFixed(0)} MB/s; CPU s/GiB: connector ${connectorCpuPerGiB.toFixed(2)}, receiver ${receiverCpuPerGiB.toFixed(2)} (checksum ${r.checksum ? 'on' : 'off'})`);
    out(`  nbdcopy (peer)      ${peerS.toFixed(1)} s  ${r.nbdcopyMBps.toFixed(0)} MB/s   ours/nbdcopy = ${r.ratioVsNbdcopy.toFixed(2)}`);
    out(`  incremental (1%)    ${incS.toFixed(2)} s = ${(100 * r.incFractionOfFull).toFixed(1)}% of the full cycle (target <= 5%)`);
    out(`  source read/changed ${r.sourceReadPerChanged.toFixed(3)} (target <= 1.2); wire/changed ${r.wirePerChanged.toFixed(3)}`);
  } finally {
    shutdownVddk();
    await vc.close().catch(() => undefined);
    await lab1.stop();
    rx.p.kill('SIGTERM');
  }
}

/** Each variant's full-cycle MB/s and CPU per GiB as a ratio to the nbd variant at the same level. */
function ratiosToNbd(): void {
  const cycles = Object.values(results).filter((r): r is { transport: string; compression: number; fullMBps: number; cpuSecondsPerGiB: number } =>
    typeof r === 'object' && r !== null && 'transport' in r);
  for (const r of cycles) {
    const nbd = cycles.find((x) => x.transport === 'nbd' && x.compression === r.compression);
    if (!nbd || r === nbd) continue;
    const ratio = { mbps: r.fullMBps / nbd.fullMBps, cpu: r.cpuSecondsPerGiB / nbd.cpuSecondsPerGiB };
    results[`ratio-${r.transport}-c${r.compression}-vs-nbd`] = ratio;
    out(`${r.transport}:${r.compression} vs nbd:${r.compression}: MB/s x${ratio.mbps.toFixed(2)}${r.transport === 'vddk' ? ' (target >= 0.9)' : ''}, CPU/GiB x${ratio.cpu.toFixed(2)}`);
  }
}

async function workgroup(dir: string): Promise<void> {
  const rx = await startReceiverProcess(join(dir, 'wg'));
  const lab = await startLab({ dir: join(dir, 'lab2'), vms: WG_VMS, diskMb: WG_MIB });
  const vc = await VCenter.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } });
  try {
    const vms = lab.vms.filter((v) => /^vm-\d+$/.test(v.name));
    for (const vm of vms) await fillFlat(vm.disks[0]!.flatPath, Math.min(vm.disks[0]!.capacity, 16 * MiB));
    const { engine, state } = await makeEngine(lab, vc, rx, join(dir, 'c2'));
    const wg = new Workgroups(engine);
    wg.create('bench', 'bench');
    for (const vm of vms) engine.createJob({ id: vm.name, vmRef: vm.moref, settings: resolveSettings({ compression: 7 }) });
    wg.add('bench', vms.map((v) => v.name));
    const scheduler = new Scheduler(engine, { logger: silentLogger, tickMs: 100 });
    const runAll = async () => {
      scheduler.start();
      while (vms.some((v) => engine.isRunning(v.name) || ['syncing', 'completing'].includes(engine.getJob(v.name).state))) await sleep(100);
      await scheduler.stop();
    };
    const mem = setInterval(() => { const m = process.memoryUsage(); if (process.env.VMLIFT_BENCH_MEM) console.error(`rss ${(m.rss / MiB).toFixed(0)} heap ${(m.heapUsed / MiB).toFixed(0)} ext ${(m.external / MiB).toFixed(0)} ab ${(m.arrayBuffers / MiB).toFixed(0)}`); }, 1000);
    if (process.env.VMLIFT_BENCH_MEM) console.error(`before: maxRSS ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`);
    const t0 = process.hrtime.bigint();
    wg.batch('bench', 'start');
    await runAll();
    const fullS = Number(process.hrtime.bigint() - t0) / 1e9;
    for (const vm of vms) await lab.write(vm.name, vm.disks[0]!.key, 0, randomBytes(256 * 1024));
    const t1 = process.hrtime.bigint();
    wg.batch('bench', 'sync');
    await runAll();
    const incS = Number(process.hrtime.bigint() - t1) / 1e9;
    clearInterval(mem);
    const failed = vms.filter((v) => engine.getJob(v.name).state !== 'waiting').length;
    state.close();
    const rssMiB = process.resourceUsage().maxRSS / 1024;
    results.workgroup = { vms: vms.length, fullSeconds: fullS, incSeconds: incS, failed, connectorPeakRssMiB: rssMiB };
    out(`workgroup of ${vms.length} VMs (${WG_MIB} MiB disks, 16 MiB data each): full ${fullS.toFixed(1)} s, incremental ${incS.toFixed(1)} s, ${failed} failed`);
    out(`  connector peak RSS ${rssMiB.toFixed(0)} MiB (target <= 512 MiB)`);
  } finally {
    await vc.close().catch(() => undefined);
    await lab.stop();
    rx.p.kill('SIGTERM');
  }
}

/** Peak RSS of this process (the connector), sampled every 100 ms until stop(). */
function rssSampler(): { startMiB: number; stop(): number } {
  let peak = process.memoryUsage().rss;
  const startMiB = peak / MiB;
  const t = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 100);
  return { startMiB, stop() { clearInterval(t); return Math.max(peak, process.memoryUsage().rss) / MiB; } };
}

/** HOST_DISKS disks on VMs of one lab host, full cycle of all at once through one engine, per transport. */
async function hostDisks(dir: string, transport: 'vddk' | 'nbd'): Promise<void> {
  dir = join(dir, `host-${transport}`);
  const rx = await startReceiverProcess(dir);
  // the lab spreads its VMs over 3 hosts: 3x as many VMs as needed leaves enough on one host
  const lab = await startLab({ dir: join(dir, 'lab3'), vms: 3 * HOST_DISKS, diskMb: HOST_MIB, vddkMap: true });
  const vc = await VCenter.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } });
  try {
    const byHost = new Map<string, string[]>();
    for (const v of (await vc.inventory()).vms) {
      if (!v.host || !lab.vms.some((l) => l.moref === v.ref && /^vm-\d+$/.test(l.name))) continue;
      byHost.set(v.host.name, [...(byHost.get(v.host.name) ?? []), v.ref]);
    }
    const [host, refs] = [...byHost].sort((a, b) => b[1].length - a[1].length)[0] ?? ['', []];
    if (refs.length < HOST_DISKS) throw new Error(`no lab host has ${HOST_DISKS} VMs (${[...byHost].map(([h, r]) => `${h}: ${r.length}`).join(', ')})`);
    const vms = refs.slice(0, HOST_DISKS).map((r) => lab.vms.find((l) => l.moref === r)!);
    for (const vm of vms) await fillFlat(vm.disks[0]!.flatPath, vm.disks[0]!.capacity);
    const bytes = vms.reduce((n, vm) => n + vm.disks[0]!.capacity, 0);
    const { engine, state } = await makeEngine(lab, vc, rx, join(dir, 'c3'), transport);
    for (const vm of vms) {
      engine.createJob({ id: vm.name, vmRef: vm.moref, settings: resolveSettings({ compression: 0, transport }) });
      engine.start(vm.name);
    }
    const rss = rssSampler();
    const t0 = process.hrtime.bigint();
    const runs = vms.map((vm) => engine.runNow(vm.name));
    await Promise.all(runs);
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    const peakRssMiB = rss.stop();
    const bad = vms.filter((vm) => state.listCycles(vm.name, 1)[0]?.state !== 'committed'
      || (transport === 'vddk' && state.getDisks(vm.name).some((d) => d.transport !== 'vddk')));
    const why = bad.map((vm) => `${vm.name}: ${state.listCycles(vm.name, 1)[0]?.state} via ${state.getDisks(vm.name).map((d) => d.transport)} ${JSON.stringify(engine.getJob(vm.name).error)}`);
    state.close();
    if (bad.length) throw new Error(`host disks, ${transport}: ${why.join('; ')}`);
    const r = { transport, host, disks: vms.length, diskMiB: HOST_MIB, perHost: DEFAULT_LIMITS.disksPerHost, seconds: s, aggregateMBps: bytes / 1e6 / s, connectorPeakRssMiB: peakRssMiB, connectorStartRssMiB: rss.startMiB };
    results[`host-disks-${transport}`] = r;
    out(`${vms.length} disks of host ${host} in parallel (${HOST_MIB} MiB random each, per-host limit ${r.perHost}), ${transport}: full ${s.toFixed(1)} s, aggregate ${r.aggregateMBps.toFixed(0)} MB/s, connector peak RSS ${peakRssMiB.toFixed(0)} MiB (${rss.startMiB.toFixed(0)} MiB at start)`);
  } finally {
    if (transport === 'vddk') shutdownVddk();
    await vc.close().catch(() => undefined);
    await lab.stop();
    rx.p.kill('SIGTERM');
  }
}

const dir = await mkdtemp(join(tmpdir(), 'vmlift-bench-engine-'));
try {
  for (const v of String(values.variants).split(',').filter(Boolean)) {
    const [transport, level] = v.split(':');
    if (transport !== 'nbd' && transport !== 'http' && transport !== 'vddk') throw new Error(`--variants: unknown transport ${transport}`);
    await cycleOne(dir, transport, Number(level ?? 7));
  }
  ratiosToNbd();
  if (WG_VMS > 0) await workgroup(dir);
  if (HOST_DISKS > 0) for (const t of ['vddk', 'nbd'] as const) await hostDisks(dir, t);
  if (values.json) console.log(JSON.stringify(results));
} finally {
  await rm(dir, { recursive: true, force: true });
}
