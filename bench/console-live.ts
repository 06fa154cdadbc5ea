/**
 * The web console's cost in a real connector (issue 15): `vmlift connector serve` as its own process,
 * a real `vmlift receiver serve`, the lab vCenter with N VMs (default 200) and one job per VM whose
 * first (full) cycle runs for the whole measurement: each disk holds random data and each job has a
 * bandwidth limit (--mbps, default 1), so all N cycles send, and their progress moves, from before the
 * first window to after the last. The connector reads each disk ahead of the wire, so the bench waits
 * until the disks are read: from then on the cycles only send, at the limit, and progress moves. Then,
 * over fixed windows (--window S, default 20 s), the connector process's CPU (utime+stime from
 * /proc/PID/stat) and peak RSS (VmRSS sampled every 250 ms), in turn:
 *   a   no console
 *   b   chromium (playwright-core, Debian's /usr/bin/chromium) open on the jobs page, following the
 *       live event stream (--rounds R times, default 3, each between two a windows)
 *   c   --pages P pages open (default 5: jobs and overview in turn; 0 skips)
 * Each console window is compared with the mean of the a windows on either side (the cycles' own cost
 * drifts); a pair whose neighbours differ by more than a quarter is shown but not counted.
 * The added CPU is reported as a percentage of the baseline (target <= 5 %). Before b, the page load as
 * the browser sees it: from navigation (cache cleared) to the jobs table rendered with N rows, and the
 * bytes over the wire (CDP Network: encoded, i.e. gzipped, bytes of each response), then the same warm.
 *
 *   bash scripts/bench.sh console-live -- [--jobs 200] [--window 20] [--rounds 3] [--mbps 1] [--pages 5] [--json]
 * Every process it starts (lab, receiver, connector, chromium) is stopped at the end, also on failure.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { startLab, type Lab } from '../lab/lab.ts';

const { values } = parseArgs({
  options: {
    jobs: { type: 'string', default: '200' },
    window: { type: 'string', default: '20' },
    mbps: { type: 'string', default: '1' },
    pages: { type: 'string', default: '5' },
    rounds: { type: 'string', default: '3' },
    json: { type: 'boolean', default: false },
  },
  strict: true,
});
const JOBS = Number(values.jobs);
const WINDOW_S = Number(values.window);
const MBPS = Number(values.mbps);
const PAGES = Number(values.pages);
const ROUNDS = Number(values.rounds);
if (!(JOBS >= 1 && WINDOW_S >= 5 && MBPS >= 1 && PAGES >= 0 && ROUNDS >= 1)) throw new Error('--jobs >= 1, --window >= 5 (seconds), --mbps >= 1, --pages >= 0, --rounds >= 1');
const MiB = 2 ** 20;
const VMLIFT = fileURLToPath(new URL('../bin/vmlift', import.meta.url));
const CHROMIUM = '/usr/bin/chromium';
const TICK = 100; // USER_HZ
const log = (s: string) => { process.stderr.write(`${s}\n`); };

// The windows, the set-up between them (browser start, page loads) and a margin, at the bandwidth limit.
const windows = 1 + 2 * ROUNDS + (PAGES > 1 ? 2 : 0);
// The connector reads the disks ahead of the wire first (about 5 min for 200 disks of 48 MiB here), and the
// windows come after that: the cycles must outlast both.
const liveSeconds = windows * WINDOW_S + 120 + 1.5 * JOBS;
const DATA_MIB = Math.ceil((MBPS * 1e6 / 8) * liveSeconds / MiB);

const children: ChildProcess[] = [];
let browser: Browser | undefined;
let lab: Lab | undefined;

function spawnChild(args: string[], stdout: 'pipe' | 'ignore'): ChildProcess {
  const p = spawn(VMLIFT, args, { stdio: ['ignore', stdout, 'pipe'] });
  children.push(p);
  let err = '';
  p.stderr!.on('data', (b) => { err = (err + b).slice(-4000); });
  p.once('exit', (c, s) => { if (c && c !== 0) log(`${args.slice(0, 2).join(' ')} exited ${c ?? s}: ${err}`); });
  return p;
}

async function startReceiver(dir: string): Promise<{ port: number; fingerprint: string; code: string }> {
  const p = spawnChild(['receiver', 'serve', '--data-dir', join(dir, 'rx'), '--listen', '127.0.0.1', '--control-port', '0', '--data-port', '0', '--json'], 'pipe');
  let buf = '';
  return new Promise((resolve, reject) => {
    p.stdout!.on('data', (b) => {
      buf += b;
      const line = buf.split('\n').find((l) => l.includes('"fingerprint"'));
      if (line) { const j = JSON.parse(line); resolve({ port: j.controlPort, fingerprint: j.fingerprint, code: j.code ?? j.activationCode?.code }); }
    });
    p.once('exit', (c) => reject(new Error(`receiver exited ${c}: ${buf}`)));
  });
}

async function run(args: string[]): Promise<string> {
  const p = spawnChild(args, 'pipe');
  let out = '';
  p.stdout!.on('data', (b) => { out += b; });
  const code = await new Promise<number | null>((r) => p.once('exit', (c) => r(c)));
  if (code !== 0) throw new Error(`vmlift ${args.slice(0, 2).join(' ')} exited ${code}`);
  return out;
}

/** CPU seconds (user + system) and VmRSS (MiB) of a process, from /proc. */
function cpuSeconds(pid: number): number {
  const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / TICK;
}
function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) / 1024;
}

async function fillRandom(path: string, bytes: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    for (let off = 0; off < bytes; off += 8 * MiB) await fh.write(randomBytes(Math.min(8 * MiB, bytes - off)), 0, undefined, off);
  } finally { await fh.close(); }
}

interface JobView { id: string; state: string; running: boolean; error: unknown }

const dir = await mkdtemp(join(tmpdir(), 'vmlift-bench-console-'));
// Interrupted (Ctrl-C, kill): stop the children here too; the lab stops with this process.
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    void browser?.close().catch(() => undefined);
    for (const p of children) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    process.exit(130);
  });
}
const results: Record<string, unknown> = { jobs: JOBS, windowSeconds: WINDOW_S, mbpsPerJob: MBPS, dataMiBPerDisk: DATA_MIB, date: new Date().toISOString() };
try {
  log(`lab: ${JOBS} VMs, ${DATA_MIB} MiB of random data on each disk (cycles of ~${Math.round(liveSeconds)} s at ${MBPS} Mbps)`);
  lab = await startLab({ dir: join(dir, 'lab'), vms: JOBS, diskMb: DATA_MIB + 8 });
  const vms = lab.vms.filter((v) => /^vm-\d+$/.test(v.name)).slice(0, JOBS);
  if (vms.length < JOBS) throw new Error(`the lab has ${vms.length} plain VMs, not ${JOBS}`);
  for (const vm of vms) await fillRandom(vm.disks[0]!.flatPath, DATA_MIB * MiB);

  const rx = await startReceiver(dir);
  const home = join(dir, 'home');
  const codeFile = join(dir, 'code');
  writeFileSync(codeFile, `${rx.code}\n`);
  await run(['connector', 'init', '--home', home, '--server', lab.url, '--user', lab.user, '--password-file', lab.passwordFile,
    '--thumbprint', lab.thumbprint, '--receiver', `127.0.0.1:${rx.port}`, '--fingerprint', rx.fingerprint, '--code-file', codeFile, '--json']);
  // Every job's cycle at once: no disk or job limit below N.
  const config = JSON.parse(readFileSync(join(home, 'config.json'), 'utf8'));
  writeFileSync(join(home, 'config.json'), JSON.stringify({ ...config, limits: { disksPerHost: JOBS, disksOverall: JOBS, maxConcurrentJobs: JOBS } }));
  spawnChild(['connector', 'serve', '--home', home, '--api-port', '0'], 'ignore');
  for (let i = 0; i < 300 && !existsSync(join(home, 'api.json')); i++) await sleep(100);
  if (!existsSync(join(home, 'api.json'))) throw new Error('the connector did not start');
  const { port, pid } = JSON.parse(readFileSync(join(home, 'api.json'), 'utf8')) as { port: number; pid: number };
  const base = `http://127.0.0.1:${port}`;
  const token = readFileSync(join(home, 'api-token'), 'utf8').trim();
  const api = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const r = await fetch(`${base}${path}`, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
    const j = await r.json() as T & { error?: { message: string } };
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${j.error?.message}`);
    return j;
  };

  log(`connector pid ${pid}: creating ${JOBS} jobs (bandwidth ${MBPS} Mbps each)`);
  // Created first, then started together, so that every cycle sends through all the windows (by moref: no search by name).
  for (const vm of vms) await api('POST', '/v1/jobs', { id: vm.name, vm: vm.moref, settings: { bandwidth: MBPS }, start: false });
  for (const vm of vms) await api('POST', `/v1/jobs/${vm.name}/start`);
  const startedAt = Date.now();
  const jobs = () => api<JobView[]>('GET', '/v1/jobs');
  // What the connector wrote (to the receiver, mostly) and read (from the lab's disks): its syscalls' bytes, from /proc
  // (vmlift_wire_bytes_total only grows when a cycle ends).
  const io = () => {
    const t = readFileSync(`/proc/${pid}/io`, 'utf8');
    return { read: Number(/rchar: (\d+)/.exec(t)?.[1]), written: Number(/wchar: (\d+)/.exec(t)?.[1]) };
  };
  for (let i = 0; ; i++) {
    const js = await jobs();
    const running = js.filter((j) => j.running).length;
    const failed = js.filter((j) => j.state === 'error');
    if (failed.length) throw new Error(`${failed.length} jobs failed, e.g. ${failed[0]!.id}: ${JSON.stringify(failed[0]!.error)}`);
    if (running === JOBS) break;
    if (i > 600) throw new Error(`only ${running} of ${JOBS} cycles running after 10 min`);
    await sleep(1000);
  }
  // The connector reads each disk ahead of the limited wire (into memory): wait until it has read them
  // (reads below 1 MB/s over 5 s after they ran above 5 MB/s), so that the windows see one steady workload, sending at the limit.
  log(`all cycles running after ${((Date.now() - startedAt) / 1000).toFixed(0)} s; waiting until the disks are read`);
  // (first the snapshots: reads start slowly, so wait for them to have begun)
  for (let i = 0, begun = false; i < 180; i++) {
    const r0 = io().read;
    await sleep(5000);
    const rate = (io().read - r0) / 5;
    if (rate > 5e6) begun = true;
    else if (begun && rate < 1e6) break;
  }
  log(`disks read after ${((Date.now() - startedAt) / 1000).toFixed(0)} s`);

  interface Phase { label: string; pages: number; cpuPercentOfCore: number; peakRssMiB: number; readMBps: number; writtenMBps: number; running: number; loadavg1: number[] }
  const phaseResults: Phase[] = [];
  const measure = async (label: string, pages: number): Promise<Phase> => {
    const io0 = io();
    const load0 = loadavg()[0]!;
    const c0 = cpuSeconds(pid);
    const t0 = process.hrtime.bigint();
    let peak = rssMiB(pid);
    const end = Date.now() + WINDOW_S * 1000;
    while (Date.now() < end) { await sleep(250); peak = Math.max(peak, rssMiB(pid)); }
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const cpu = cpuSeconds(pid) - c0;
    const io1 = io();
    const js = await jobs();
    const running = js.filter((j) => j.running).length;
    const ph = { label, pages, cpuPercentOfCore: (cpu / wall) * 100, peakRssMiB: peak, readMBps: (io1.read - io0.read) / 1e6 / wall, writtenMBps: (io1.written - io0.written) / 1e6 / wall, running, loadavg1: [load0, loadavg()[0]!] };
    if (running < JOBS) log(`warning: only ${running} of ${JOBS} cycles were still running at the end of window ${label}`);
    log(`${label}: connector CPU ${ph.cpuPercentOfCore.toFixed(2)} % of a core, peak RSS ${peak.toFixed(0)} MiB, read ${ph.readMBps.toFixed(1)} MB/s, written ${ph.writtenMBps.toFixed(1)} MB/s, ${running} cycles running, load ${load0.toFixed(1)}→${loadavg()[0]!.toFixed(1)}`);
    phaseResults.push(ph);
    return ph;
  };

  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
  const context = await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 900 } });
  // log in once with a one-time link (as `vmlift connector console-url` prints), on a page closed afterwards
  const loginPage = await context.newPage();
  const link = await api<{ url: string }>('POST', '/v1/session/links');
  await loginPage.goto(link.url);
  await loginPage.getByRole('heading', { name: 'Overview' }).waitFor({ timeout: 60_000 });
  await loginPage.close();

  /** A page opened on `hash`, timed to `ready`, with the bytes of every response over the wire (CDP). */
  const openPage = async (ctx: BrowserContext, hash: string, cold: boolean) => {
    const page = await ctx.newPage();
    page.setDefaultTimeout(120_000);
    const cdp = await ctx.newCDPSession(page);
    await cdp.send('Network.enable');
    if (cold) await cdp.send('Network.clearBrowserCache');
    const urls = new Map<string, string>();
    const bytes = { assets: 0, api: 0, events: 0, messages: 0, files: 0 };
    cdp.on('Network.requestWillBeSent', (e) => { urls.set(e.requestId, e.request.url); });
    cdp.on('Network.eventSourceMessageReceived', (e) => { bytes.events += e.data.length; bytes.messages++; });
    cdp.on('Network.loadingFinished', (e) => {
      const u = urls.get(e.requestId) ?? '';
      if (u.endsWith('/v1/events')) return;
      bytes.files++;
      if (u.includes('/v1/')) bytes.api += e.encodedDataLength; else bytes.assets += e.encodedDataLength;
    });
    const t0 = Date.now();
    await page.goto(`${base}/console/#/${hash}`);
    if (hash === 'jobs') await page.locator(`tr[data-job="${vms.at(-1)!.name}"]`).waitFor();
    else await page.getByRole('heading', { name: 'Overview' }).waitFor();
    const ms = Date.now() - t0;
    const rows = await page.locator('tr[data-job]').count();
    return { page, ms, rows, bytes };
  };

  const cold = await openPage(context, 'jobs', true);
  if (cold.rows !== JOBS) throw new Error(`the jobs page shows ${cold.rows} rows, not ${JOBS}`);
  await cold.page.close();
  const warm = await openPage(context, 'jobs', false);
  await warm.page.close();
  const load = {
    coldMs: cold.ms, warmMs: warm.ms, rows: cold.rows,
    coldAssetBytes: cold.bytes.assets, coldApiBytes: cold.bytes.api, coldFiles: cold.bytes.files,
    warmAssetBytes: warm.bytes.assets, warmFiles: warm.bytes.files,
  };
  results.pageLoad = load;
  log(`page load (jobs table with ${cold.rows} rows): cold ${cold.ms} ms, ${(cold.bytes.assets / 1024).toFixed(1)} KiB of page (gzip) + ${(cold.bytes.api / 1024).toFixed(1)} KiB API; warm ${warm.ms} ms, ${(warm.bytes.assets / 1024).toFixed(1)} KiB`);

  // Windows without and with the console in turn (a b a b a c a): the cycles' own cost drifts as they go
  // from reading to only sending, so each console window is compared with the mean of its neighbours.
  const pairs: { x: Phase; before: Phase; after: Phase; pointsOfCore: number; percentOfBaseline: number; steady: boolean }[] = [];
  const eventRates: { bytes: number; messages: number }[] = [];
  let prev = await measure('a  no console', 0);
  const withPages = async (n: number, label: string) => {
    const open: Awaited<ReturnType<typeof openPage>>[] = [];
    for (let i = 0; i < n; i++) open.push(await openPage(context, i % 2 ? 'overview' : 'jobs', false));
    await sleep(2000);
    const ev0 = { ...open[0]!.bytes };
    const x = await measure(label, n);
    eventRates.push({ bytes: (open[0]!.bytes.events - ev0.events) / WINDOW_S, messages: (open[0]!.bytes.messages - ev0.messages) / WINDOW_S });
    for (const p of open) await p.page.close();
    await sleep(2000);
    const after = await measure('a  no console', 0);
    const baseline = (prev.cpuPercentOfCore + after.cpuPercentOfCore) / 2;
    // neighbours that differ by more than a quarter: the workload moved under the window, not counted
    const steady = Math.abs(prev.cpuPercentOfCore - after.cpuPercentOfCore) <= 0.25 * baseline;
    pairs.push({ x, before: prev, after, pointsOfCore: x.cpuPercentOfCore - baseline, percentOfBaseline: ((x.cpuPercentOfCore - baseline) / baseline) * 100, steady });
    prev = after;
  };
  for (let r = 0; r < ROUNDS; r++) await withPages(1, 'b  console: jobs page, live');
  if (PAGES > 1) await withPages(PAGES, `c  console: ${PAGES} pages, live`);
  await browser.close();
  browser = undefined;

  const endJobs = await jobs();
  const byState: Record<string, number> = {};
  for (const j of endJobs) byState[`${j.state}${j.running ? ' (running)' : ''}`] = (byState[`${j.state}${j.running ? ' (running)' : ''}`] ?? 0) + 1;
  const anError = endJobs.find((j) => j.error)?.error;
  const mean = (xs: number[]) => xs.reduce((n, x) => n + x, 0) / xs.length;
  const one = pairs.filter((p) => p.x.pages === 1 && p.steady);
  const many = pairs.filter((p) => p.x.pages > 1 && p.steady);
  const eventBytesPerS = mean(eventRates.map((e) => e.bytes));
  const eventsPerS = mean(eventRates.map((e) => e.messages));
  results.phases = phaseResults;
  results.pairs = pairs.map((p) => ({ label: p.x.label, pages: p.x.pages, pointsOfCore: p.pointsOfCore, percentOfBaseline: p.percentOfBaseline, steady: p.steady }));
  results.addedByConsole = {
    onePage: { pairs: one.length, pointsOfCore: mean(one.map((p) => p.pointsOfCore)), percentOfBaseline: mean(one.map((p) => p.percentOfBaseline)) },
    ...(many.length ? { pages: PAGES, manyPages: { pointsOfCore: mean(many.map((p) => p.pointsOfCore)), percentOfBaseline: mean(many.map((p) => p.percentOfBaseline)) } } : {}),
  };
  results.eventStream = { bytesPerSecond: eventBytesPerS, eventsPerSecond: eventsPerS };
  results.targetPercent = 5;
  results.jobsAtEnd = byState;
  if (anError) results.anError = anError;
  results.loadavg = loadavg();

  if (values.json) console.log(JSON.stringify(results));
  else {
    console.log(`console-live: ${JOBS} jobs, each a full cycle at ${MBPS} Mbps through a real connector and receiver; windows of ${WINDOW_S} s`);
    console.log('| window | pages | connector CPU (% of a core) | peak RSS | read / written | cycles running | load avg (1 min) |');
    console.log('|---|---|---|---|---|---|---|');
    for (const x of phaseResults) {
      console.log(`| ${x.label} | ${x.pages} | ${x.cpuPercentOfCore.toFixed(2)} | ${x.peakRssMiB.toFixed(0)} MiB | ${x.readMBps.toFixed(1)} / ${x.writtenMBps.toFixed(1)} MB/s | ${x.running}/${JOBS} | ${x.loadavg1.map((l) => l.toFixed(1)).join('→')} |`);
    }
    for (const p of pairs) console.log(`${p.x.label}: ${p.pointsOfCore >= 0 ? '+' : ''}${p.pointsOfCore.toFixed(2)} points of a core = ${p.percentOfBaseline >= 0 ? '+' : ''}${p.percentOfBaseline.toFixed(1)} % of the windows around it without a console${p.steady ? '' : ' (unsteady neighbours: not counted)'}`);
    const ab = results.addedByConsole as { onePage: { pointsOfCore: number; percentOfBaseline: number }; manyPages?: { pointsOfCore: number; percentOfBaseline: number } };
    if (!one.length) console.log('added by the console (1 page): no steady pair of windows (the workload moved under each; run again, or with more --rounds)');
    else console.log(`added by the console (1 page, mean of ${one.length} steady windows): ${ab.onePage.pointsOfCore.toFixed(2)} points of a core = ${ab.onePage.percentOfBaseline.toFixed(1)} % of the connector's CPU without it (target <= 5 %): ${ab.onePage.percentOfBaseline <= 5 ? 'met' : 'NOT met'}`);
    if (ab.manyPages) console.log(`added by ${PAGES} pages: ${ab.manyPages.pointsOfCore.toFixed(2)} points = ${ab.manyPages.percentOfBaseline.toFixed(1)} %`);
    console.log(`page load to the jobs table with ${load.rows} rows: cold ${load.coldMs} ms (${(load.coldAssetBytes / 1024).toFixed(1)} KiB page gzip, ${load.coldFiles} files), warm ${load.warmMs} ms (${(load.warmAssetBytes / 1024).toFixed(1)} KiB)`);
    console.log(`event stream to one page: ${eventsPerS.toFixed(2)} events/s, ${(eventBytesPerS / 1024).toFixed(1)} KiB/s; jobs at the end: ${JSON.stringify(byState)}${anError ? `; an error: ${JSON.stringify(anError)}` : ''}`);
  }
} finally {
  await browser?.close().catch(() => undefined);
  for (const p of children) if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
  for (let i = 0; i < 100 && children.some((p) => p.exitCode === null && p.signalCode === null); i++) await sleep(100);
  for (const p of children) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  await lab?.stop().catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
}
