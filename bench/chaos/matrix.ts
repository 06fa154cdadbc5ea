/**
 * The kill -9 matrix (issue 12 §2): seeded trials that SIGKILL the connector, the receiver or the
 * agent at a point of a cycle, restart it, let the cycle finish, and check what a user relies on:
 * every committed image verifies and exports bit-identical to its source, no `vmlift-` snapshot is
 * left on the VM, no temp file or open cycle is left after the next gc, and the bytes sent twice stay
 * within the bound (the sender's window per kill, docs/reliability.md).
 *
 * A trial reaches its point in one of two ways: a named crash point (`VMLIFT_TEST_CRASH_AT=name:n`,
 * src/util/crash.ts) or a seeded delay after the cycle's transfer was seen to start (progress, the
 * connector's live step, the receiver's "cycle begun" log line), then SIGKILL from outside.
 * Each trial prints its seed and point; the same `--seed` replays the same trials.
 */
import { mkdir, mkdtemp, open, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { startLab, type Lab, type LabVm } from '../../lab/lab.ts';
import { Rng, trialSeed } from './rng.ts';
import { CountingProxy } from './proxy.ts';
import { ReceiverProc, ConnectorProc, startAgent, cli, type AgentRun } from './procs.ts';
import { checkStore, fileSha } from './checks.ts';

const MiB = 1 << 20;
export type ChaosProcess = 'connector' | 'receiver' | 'agent';
export const PROCESSES: ChaosProcess[] = ['connector', 'receiver', 'agent'];

/** A point of a cycle: a named crash point passed `n` times (n drawn from the range), or a delay. */
interface PointSpec { phase: string; crash?: string; n?: [number, number]; delayMs?: [number, number] }

export const POINTS: Record<ChaosProcess, PointSpec[]> = {
  connector: [
    { phase: 'snapshot create', crash: 'vc:snapshot-created' },
    { phase: 'changed-area query', crash: 'engine:changed-areas' },
    { phase: 'read', crash: 'engine:read', n: [1, 8] },
    { phase: 'send', crash: 'transfer:send', n: [1, 16] },
    { phase: 'flush', crash: 'transfer:flush' },
    { phase: 'commit', crash: 'transfer:commit' },
    { phase: 'commit', crash: 'engine:after-receiver-commit' },
    { phase: 'transfer', delayMs: [0, 3000] },
  ],
  receiver: [
    { phase: 'send', crash: 'receiver:extent', n: [1, 16] },
    { phase: 'flush', crash: 'store:flush', n: [1, 3] },
    { phase: 'flush', crash: 'store:pack-synced', n: [1, 3] },
    { phase: 'flush', crash: 'store:pack-sealed', n: [1, 3] },
    { phase: 'commit', crash: 'store:commit-flushed' },
    { phase: 'commit', crash: 'store:commit-verified' },
    { phase: 'commit', crash: 'store:commit-published' },
    { phase: 'retention', crash: 'store:retention' },
    { phase: 'gc', crash: 'store:gc' }, // one pass per pack deleted (a cycle's garbage is one or two packs)
    { phase: 'export', crash: 'store:export', n: [1, 12] },
    { phase: 'transfer', delayMs: [0, 3000] },
  ],
  agent: [
    { phase: 'read', crash: 'agent:read', n: [1, 16] },
    { phase: 'send', crash: 'transfer:send', n: [1, 16] },
    { phase: 'flush', crash: 'transfer:flush' },
    { phase: 'commit', crash: 'transfer:commit' },
    { phase: 'commit', crash: 'agent:after-commit' },
    { phase: 'transfer', delayMs: [0, 3000] },
  ],
};

export interface MatrixOptions {
  seed: number;
  trials: number;
  processes: ChaosProcess[];
  /** Run only these trial numbers (replay). */
  only?: number[];
  /** Changed MiB per cycle (1 MiB blocks of random data), default 16. */
  changeMib?: number;
  /** Disk / device size in MiB, default 32. */
  diskMib?: number;
  /** The senders' window in MiB, default 4 (smaller than a cycle, so that the bound says something). */
  windowMib?: number;
  bandwidthMbps?: number;
  /** Only these points (crash point names, or `delay`) per process, taken in turn. */
  pick?: Partial<Record<ChaosProcess, string[]>>;
  /** Verify and export with the CLI (default) or the store API (fewer processes, for the short test). */
  cliChecks?: boolean;
  log?: (line: string) => void;
}

export interface TrialResult {
  process: ChaosProcess;
  index: number;
  seed: number;
  point: string;
  phase: string;
  /** The process died at the point (false: the cycle ended before it was reached). */
  hit: boolean;
  kills: number;
  imagesChecked: number;
  corrupt: string[];
  leftovers: string[];
  /** Anything else that went against the design (e.g. an agent that had to be run again after a receiver kill). */
  failures: string[];
  resentBytes: number;
  boundBytes: number;
  /** Data-port bytes of the reference cycle and of the interrupted one (all attempts). */
  refWire: number;
  chaosWire: number;
  seconds: number;
  notes: string[];
}

export interface MatrixRow { process: ChaosProcess; failures: number; trials: number; hit: number; phases: string[]; images: number; corrupt: number; leftovers: number; maxResent: number; bound: number; overBound: number }

interface Ctx {
  o: Required<Omit<MatrixOptions, 'only' | 'log'>> & { log: (s: string) => void };
  dir: string;
  rx: ReceiverProc;
  proxy: CountingProxy;
  codeFile: string;
  exportDir: string;
}

function choosePoint(ctx: Ctx, proc: ChaosProcess, index: number): { spec: PointSpec; point: string; n: number; delay: number; rng: Rng } {
  const seed = ctx.o.seed;
  const only = ctx.o.pick[proc];
  const list = only?.length ? POINTS[proc].filter((p) => only.includes(p.crash ?? 'delay')) : POINTS[proc];
  if (!list.length) throw new Error(`no point of ${proc} is named ${only!.join(', ')}`);
  // round robin from a seeded offset, so that 10 trials cover every point of a process
  const offset = new Rng(trialSeed(seed, proc, -1)).int(0, list.length - 1);
  const spec = list[(offset + index) % list.length]!;
  const rng = new Rng(trialSeed(seed, proc, index));
  // pass counts are written for 16 MiB of change per cycle; a smaller cycle passes fewer times
  const n = spec.n ? rng.int(spec.n[0], Math.max(spec.n[0], Math.round(spec.n[1] * Math.min(1, ctx.o.changeMib / 16)))) : 1;
  const delay = spec.delayMs ? rng.int(spec.delayMs[0], spec.delayMs[1]) : 0;
  const point = spec.crash ? (n > 1 ? `${spec.crash}:${n}` : spec.crash) : `delay ${delay} ms after the transfer began`;
  return { spec, point, n, delay, rng };
}

/** Writes `mib` distinct random 1 MiB blocks into a device file (or through `write`), seeded. */
async function writeBlocks(rng: Rng, mib: number, diskMib: number, write: (off: number, data: Buffer) => Promise<void>): Promise<void> {
  for (const slot of rng.distinct(mib, diskMib)) await write(slot * MiB, rng.bytes(MiB));
}

async function liveSha(lab: Lab, vm: LabVm): Promise<string[]> {
  const out: string[] = [];
  for (const d of vm.disks) {
    const h = createHash('sha256');
    for (let off = 0; off < d.capacity; off += 8 * MiB) h.update(await lab.read(vm.name, d.key, off, Math.min(8 * MiB, d.capacity - off)));
    out.push(h.digest('hex'));
  }
  return out;
}

function bound(ctx: Ctx, kills: number): number {
  // per interruption: the sender's window of unacknowledged payload, plus 1% for frame and TLS overhead
  return Math.ceil(kills * ctx.o.windowMib * MiB * 1.01);
}

// ---------------------------------------------------------------- agent and receiver trials

function agentArgs(ctx: Ctx, device: string, stateDir: string, sourceId: string): string[] {
  return ['--device', device, '--receiver', ctx.rx.address, '--fingerprint', ctx.rx.fingerprint, '--code-file', ctx.codeFile,
    '--state-dir', stateDir, '--source-id', sourceId, '--retry-for', '2m', '--compression', '0', '--bandwidth', String(ctx.o.bandwidthMbps),
    '--max-images', '1', '--checksum', '--proxy', ctx.proxy.url, '--window-mib', String(ctx.o.windowMib)];
}

function cycleLine(run: AgentRun): { imageId: string } | undefined {
  return run.lines.find((l) => l.type === 'cycle') as { imageId: string } | undefined;
}

async function agentTrial(ctx: Ctx, proc: 'agent' | 'receiver', index: number): Promise<TrialResult> {
  const t0 = Date.now();
  const { spec, point, delay, rng } = choosePoint(ctx, proc, index);
  const seed = trialSeed(ctx.o.seed, proc, index);
  const notes: string[] = [];
  const failures: string[] = [];
  const sourceId = `${proc}-${index}`;
  const device = join(ctx.dir, `${sourceId}.img`);
  const stateDir = join(ctx.dir, `${sourceId}-state`);
  const args = agentArgs(ctx, device, stateDir, sourceId);
  const expected = new Map<string, string[]>();
  const fh = await open(device, 'w+');
  await fh.truncate(ctx.o.diskMib * MiB);
  await writeBlocks(rng, ctx.o.changeMib, ctx.o.diskMib, async (off, b) => { await fh.write(b, 0, b.length, off); });
  await fh.sync();

  // the reference cycle: nothing killed; its wire bytes are what the same amount of change costs
  ctx.proxy.reset();
  const base = startAgent(args);
  const be = await base.done;
  const baseImage = cycleLine(base);
  if (be.code !== 0 || !baseImage) throw new Error(`${sourceId}: the reference cycle failed (${be.code ?? be.signal}): ${base.stderr.slice(-1500)}`);
  expected.set(baseImage.imageId, [await fileSha(device)]);
  const refWire = ctx.proxy.dataBytes;

  await writeBlocks(rng, ctx.o.changeMib, ctx.o.diskMib, async (off, b) => { await fh.write(b, 0, b.length, off); });
  await fh.sync();
  await fh.close();
  const want = [await fileSha(device)];
  ctx.proxy.reset();

  let hit = false;
  let kills = 0;
  const runToEnd = async (first?: AgentRun): Promise<AgentRun> => {
    let run = first ?? startAgent(args);
    for (let attempt = 1; ; attempt++) {
      const x = await run.done;
      if (x.code === 0 && cycleLine(run)) return run;
      if (attempt >= 3) throw new Error(`${sourceId}: the agent did not finish the cycle (${x.code ?? x.signal}): ${run.stderr.slice(-1500)}`);
      const why = `agent run ${attempt} ended ${x.code ?? x.signal}${x.signal ? '' : `: ${run.stderr.trim().split('\n').pop()}`}`;
      // the agent reconnects by itself to a receiver that comes back: having to run it again is a failure
      if (proc === 'receiver') failures.push(why); else notes.push(why);
      run = startAgent(args);
    }
  };

  let final: AgentRun;
  if (proc === 'agent') {
    if (spec.crash) {
      const armed = startAgent(args, { VMLIFT_TEST_CRASH_AT: point });
      const x = await armed.done;
      hit = x.signal === 'SIGKILL';
      if (hit) kills++;
      final = hit ? await runToEnd() : await runToEnd(armed);
    } else {
      let timer: NodeJS.Timeout | undefined;
      const armed = startAgent(args, {}, (l, run) => {
        if (l.type === 'progress' && !timer) timer = setTimeout(() => { if (run.proc.exitCode === null) { hit = true; run.proc.kill('SIGKILL'); } }, delay);
      });
      const x = await armed.done;
      clearTimeout(timer);
      if (hit && x.signal === 'SIGKILL') kills++; else hit = false;
      final = hit ? await runToEnd() : await runToEnd(armed);
    }
  } else if (spec.crash === 'store:export') {
    final = await runToEnd();
  } else {
    const rx = ctx.rx;
    let restarted: Promise<void> = Promise.resolve();
    if (spec.crash) {
      await rx.stop();
      await rx.start(point);
      const armedExit = rx.exited;
      restarted = armedExit.then(async (x) => {
        if (x.signal !== 'SIGKILL') return;
        hit = true; kills++;
        await rx.start();
      });
      final = await runToEnd();
      await sleep(200);
      if (!hit && rx.running) {
        await rx.stop();
        await restarted;
        await rx.start();
      }
      await restarted;
    } else {
      let timer: NodeJS.Timeout | undefined;
      rx.watch((line) => {
        if (!line.includes('cycle begun') || !line.includes(`"${sourceId}"`)) return false;
        timer = setTimeout(() => {
          if (!rx.running) return;
          hit = true; kills++;
          restarted = rx.kill9().then(() => rx.start());
        }, delay);
        return true;
      });
      final = await runToEnd();
      clearTimeout(timer);
      await restarted;
    }
  }
  const img = cycleLine(final)!;
  expected.set(img.imageId, want);
  const chaosWire = ctx.proxy.dataBytes;
  const resent = Math.max(0, chaosWire - refWire);

  const check0: string[] = [];
  if (spec.crash === 'store:export') {
    // kill `vmlift image export` half-way, then export again: bit-identical, nothing left behind
    const out = join(ctx.exportDir, `${sourceId}-export.raw`);
    const ex = ['image', 'export', '--data-dir', ctx.rx.dataDir, '--source', sourceId, '--image', img.imageId, '--output', out];
    const k = await cli(ex, { VMLIFT_TEST_CRASH_AT: point });
    hit = k.signal === 'SIGKILL';
    if (hit) kills++;
    const again = await cli(ex);
    if (again.code !== 0) failures.push(`export after the kill failed: ${again.stderr.trim()}`);
    else if (await fileSha(out) !== want[0]) check0.push('the export after the kill is not bit-identical');
    await rm(out, { force: true });
  }

  const check = await checkStore({ dataDir: ctx.rx.dataDir, sourceId, expected, exportDir: ctx.exportDir, useCli: ctx.o.cliChecks, maxImages: 1 });
  const st = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8').catch(() => '{}')) as { openCycle?: unknown };
  if (st.openCycle) check.leftovers.push(`agent state still names an open cycle: ${JSON.stringify(st.openCycle)}`);
  await rm(device, { force: true });
  const corrupt = [...check.corrupt, ...check0];
  return {
    process: proc, index, seed, point, phase: spec.phase, hit, kills, imagesChecked: check.images, corrupt, leftovers: check.leftovers,
    resentBytes: spec.crash === 'store:export' ? 0 : resent, boundBytes: bound(ctx, Math.max(kills, 0)), refWire, chaosWire, seconds: (Date.now() - t0) / 1000, notes, failures,
  };
}

// ---------------------------------------------------------------- connector trials

interface JobView { job: { state: string; sourceId: string; error: unknown }; cycles: { id: string; state: string; imageId: string | null }[]; live: { step: string } | null }

interface ConnectorRig { lab: Lab; conn: ConnectorProc; vms: LabVm[] }

async function connectorRig(ctx: Ctx): Promise<ConnectorRig> {
  const lab = await startLab({ dir: join(ctx.dir, 'lab'), vms: Math.max(ctx.o.trials, 1), diskMb: ctx.o.diskMib });
  const home = join(ctx.dir, 'connector');
  const init = await cli(['connector', 'init', '--home', home, '--server', lab.url, '--user', lab.user, '--password-file', lab.passwordFile,
    '--thumbprint', lab.thumbprint, '--receiver', ctx.rx.address, '--fingerprint', ctx.rx.fingerprint, '--code-file', ctx.codeFile, '--proxy', ctx.proxy.url]);
  if (init.code !== 0) throw new Error(`connector init failed: ${init.stderr}`);
  const cfgPath = join(home, 'config.json');
  const cfg = JSON.parse(await readFile(cfgPath, 'utf8')) as { receiver: Record<string, unknown> };
  cfg.receiver.windowMib = ctx.o.windowMib;
  await writeFile(cfgPath, JSON.stringify(cfg, null, 2));
  const conn = new ConnectorProc(home);
  await conn.serve();
  return { lab, conn, vms: lab.vms.filter((v) => /^vm-\d+$/.test(v.name)) };
}

async function waitJob(conn: ConnectorProc, id: string, pred: (v: JobView) => boolean, what: string, ms = 180_000): Promise<JobView> {
  const end = Date.now() + ms;
  let v: JobView | undefined;
  let resumed = false;
  while (Date.now() < end) {
    v = await conn.api<JobView>('GET', `/v1/jobs/${id}`);
    if (pred(v)) return v;
    // restart and finish: an attempt that failed outright is resumed, as a user would (`job resume`)
    if (v.job.state === 'error' && !resumed) { resumed = true; await conn.api('POST', `/v1/jobs/${id}/resume`); }
    await sleep(200);
  }
  throw new Error(`job ${id}: timed out waiting for ${what}: ${JSON.stringify(v)}`);
}

async function connectorTrial(ctx: Ctx, rig: ConnectorRig, index: number): Promise<TrialResult> {
  const t0 = Date.now();
  const { spec, point, delay, rng } = choosePoint(ctx, 'connector', index);
  const seed = trialSeed(ctx.o.seed, 'connector', index);
  const notes: string[] = [];
  const failures: string[] = [];
  const vm = rig.vms[index % rig.vms.length]!;
  const id = `c${index}`;
  const { conn, lab } = rig;
  const disk = vm.disks[0]!;
  const write = (off: number, b: Buffer) => lab.write(vm.name, disk.key, off, b);
  const expected = new Map<string, string[]>();
  const diskMib = Math.floor(disk.capacity / MiB);

  await writeBlocks(rng, ctx.o.changeMib, diskMib, write);
  const job = await conn.api<{ sourceId: string }>('POST', '/v1/jobs', { id, vm: vm.name, settings: { maxImages: 1, compression: 0, bandwidth: ctx.o.bandwidthMbps, transport: 'http', checksum: true } });
  const baseWant = await liveSha(lab, vm);
  ctx.proxy.reset();
  await conn.api('POST', `/v1/jobs/${id}/start`);
  const done1 = (v: JobView) => v.job.state === 'waiting' && v.cycles.length >= 1 && v.cycles[0]!.state === 'committed';
  const b = await waitJob(conn, id, done1, 'the first cycle');
  expected.set(b.cycles[0]!.imageId!, baseWant);
  // the reference: an incremental of the same size, nothing killed (a first cycle reads more: its
  // allocated areas, in the lab's block size); its wire bytes are what this much change costs
  await writeBlocks(rng, ctx.o.changeMib, diskMib, write);
  const refWant = await liveSha(lab, vm);
  ctx.proxy.reset();
  await conn.api('POST', `/v1/jobs/${id}/sync`);
  const doneN = (n: number) => (v: JobView) => v.job.state === 'waiting' && v.cycles.length >= n && v.cycles[0]!.state === 'committed' && !v.live;
  const r = await waitJob(conn, id, doneN(2), 'the reference cycle');
  expected.set(r.cycles[0]!.imageId!, refWant);
  const refWire = ctx.proxy.dataBytes;

  await writeBlocks(rng, ctx.o.changeMib, diskMib, write);
  const want = await liveSha(lab, vm);
  const done2 = doneN(3);
  let hit = false;
  let kills = 0;
  if (spec.crash) {
    await conn.stop();
    await conn.serve(point);
  }
  ctx.proxy.reset();
  await conn.api('POST', `/v1/jobs/${id}/sync`);
  if (spec.crash) {
    for (;;) {
      if (!conn.running) break;
      const v = await conn.api<JobView>('GET', `/v1/jobs/${id}`).catch(() => null);
      if (v && done2(v)) break;
      await sleep(150);
    }
    const x = conn.running ? null : await conn.exited;
    hit = x?.signal === 'SIGKILL';
    if (hit) kills++;
    if (conn.running) await conn.stop();
    await conn.serve();
  } else {
    const v = await waitJob(conn, id, (j) => j.live?.step === 'transfer' || done2(j), 'the transfer to begin');
    if (!done2(v)) {
      await sleep(delay);
      const after = await conn.api<JobView>('GET', `/v1/jobs/${id}`);
      hit = !done2(after);
      await conn.kill9();
      kills++;
      await conn.serve();
    }
  }
  const fin = await waitJob(conn, id, done2, 'the cycle to finish after the restart');
  if (fin.cycles.length !== 3) failures.push(`${fin.cycles.length} cycles recorded (the interrupted one should be resumed, not repeated)`);
  expected.set(fin.cycles[0]!.imageId!, want);
  const chaosWire = ctx.proxy.dataBytes;
  const resent = Math.max(0, chaosWire - refWire);

  const check = await checkStore({ dataDir: ctx.rx.dataDir, sourceId: job.sourceId, expected, exportDir: ctx.exportDir, useCli: ctx.o.cliChecks, maxImages: 1 });
  for (const s of await lab.snapshots(vm.name)) if (s.name.startsWith('vmlift-')) check.leftovers.push(`snapshot ${s.name} on ${vm.name}`);
  for (const c of fin.cycles) if (c.state === 'running') check.leftovers.push(`cycle ${c.id} still running in the connector's state`);
  // the next trial's VM is another one; this job stops here
  await conn.api('POST', `/v1/jobs/${id}/pause`).catch(() => undefined);
  return {
    process: 'connector', index, seed, point, phase: spec.phase, hit, kills, imagesChecked: check.images, corrupt: check.corrupt,
    leftovers: check.leftovers, resentBytes: resent, boundBytes: bound(ctx, kills), refWire, chaosWire, seconds: (Date.now() - t0) / 1000, notes, failures,
  };
}

// ---------------------------------------------------------------- the matrix

export function trialLine(r: TrialResult): string {
  const mib = (b: number) => (b / MiB).toFixed(1);
  const bad = r.corrupt.length || r.leftovers.length || r.failures.length || r.resentBytes > r.boundBytes;
  return `${r.process} #${r.index} seed=${r.seed} point=${r.point} (${r.phase}) ${r.hit ? 'killed' : 'not reached'}` +
    ` images=${r.imagesChecked} corrupt=${r.corrupt.length} leftovers=${r.leftovers.length} re-sent=${mib(r.resentBytes)}/${mib(r.boundBytes)} MiB (wire ${mib(r.chaosWire)} vs ${mib(r.refWire)})` +
    ` ${r.seconds.toFixed(1)} s${bad ? ` FAIL ${[...r.corrupt, ...r.leftovers, ...r.failures].join('; ')}` : ''}${r.notes.length ? ` (${r.notes.join('; ')})` : ''}`;
}

export function summarize(results: TrialResult[]): MatrixRow[] {
  const rows: MatrixRow[] = [];
  for (const p of PROCESSES) {
    const rs = results.filter((r) => r.process === p);
    if (!rs.length) continue;
    rows.push({
      process: p, failures: rs.reduce((n, r) => n + r.failures.length, 0), trials: rs.length, hit: rs.filter((r) => r.hit).length,
      phases: [...new Set(rs.filter((r) => r.hit).map((r) => r.phase))],
      images: rs.reduce((n, r) => n + r.imagesChecked, 0),
      corrupt: rs.reduce((n, r) => n + r.corrupt.length, 0),
      leftovers: rs.reduce((n, r) => n + r.leftovers.length, 0),
      maxResent: Math.max(...rs.map((r) => r.resentBytes)),
      bound: Math.max(...rs.map((r) => r.boundBytes)),
      overBound: rs.filter((r) => r.resentBytes > r.boundBytes).length,
    });
  }
  return rows;
}

export function table(rows: MatrixRow[]): string {
  const mib = (b: number) => `${(b / MiB).toFixed(1)} MiB`;
  const head = ['process', 'trials', 'points hit', 'images checked', 'corrupt', 'leftovers', 'max re-sent / bound', 'other failures'];
  const body = rows.map((r) => [r.process, String(r.trials), `${r.hit} (${r.phases.join(', ')})`, String(r.images), String(r.corrupt), String(r.leftovers),
    `${mib(r.maxResent)} / ${mib(r.bound)}${r.overBound ? ` (${r.overBound} over)` : ''}`, String(r.failures)]);
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...body.map((b) => `| ${b.join(' | ')} |`)].join('\n');
}

export async function runMatrix(opts: MatrixOptions): Promise<{ results: TrialResult[]; rows: MatrixRow[] }> {
  const o = { changeMib: 16, diskMib: 32, windowMib: 4, bandwidthMbps: 64, cliChecks: true, pick: {}, log: (s: string) => { process.stdout.write(`${s}\n`); }, ...opts } as Ctx['o'] & { only?: number[] };
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-chaos-'));
  const results: TrialResult[] = [];
  let rig: ConnectorRig | undefined;
  let ctx: Ctx | undefined;
  try {
    const exportDir = join(dir, 'exports');
    await mkdir(exportDir);
    const rx = await ReceiverProc.create(join(dir, 'receiver'));
    const codeFile = join(dir, 'code');
    await writeFile(codeFile, `${rx.code}\n`, { mode: 0o600 });
    const proxy = await CountingProxy.start(() => rx.dataPort);
    ctx = { o, dir, rx, proxy, codeFile, exportDir };
    o.log(`kill -9 matrix: seed ${o.seed}, ${o.trials} trials of ${o.processes.join(', ')}; ${o.changeMib} MiB changed per cycle, window ${o.windowMib} MiB`);
    for (const p of o.processes) {
      if (p === 'connector') rig = await connectorRig(ctx);
      for (let i = 0; i < o.trials; i++) {
        if (o.only && !o.only.includes(i)) continue;
        const r = p === 'connector' ? await connectorTrial(ctx, rig!, i) : await agentTrial(ctx, p, i);
        results.push(r);
        o.log(trialLine(r));
      }
      if (rig) { await rig.conn.stop(); await rig.lab.stop(); rig = undefined; }
    }
  } finally {
    if (rig) { await rig.conn.kill9(); await rig.lab.stop().catch(() => undefined); }
    if (ctx) { await ctx.rx.kill9(); await ctx.proxy.close(); }
    await rm(dir, { recursive: true, force: true });
  }
  return { results, rows: summarize(results) };
}
