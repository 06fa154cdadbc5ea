/**
 * Fuzzing the receiver (issue 12 §4): a seeded structural fuzzer against a real `vmlift receiver
 * serve` child over TLS. Data-port sessions (authenticated, so inputs reach past the HELLO, and not),
 * control-API requests, and the fixed hostile cases (zstd bombs, 100 MiB bodies, JSON nested 10^5
 * deep, slow-drip clients, thousands of connections) run at once while a legitimate `vmlift agent
 * sync` ships cycles of another source. Afterwards: the receiver is alive and answers, no file was
 * written outside its data folder or named after a fuzzed id, its peak RSS stayed under the bound,
 * no answer was a 5xx other than 507 nor an INTERNAL error frame, and the agent's images export
 * bit-identical. Outcomes are counted by kind ("refused BAD_DIGEST", "closed", "timed out", …).
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import type tls from 'node:tls';
import { FRAME, FrameAssembler, MAX_FRAME, encodeJsonFrame } from '../../../src/transfer/protocol.ts';
import { ControlClient } from '../../../src/transfer/control-client.ts';
import type { DiskSpec } from '../../../src/model/images.ts';
import { runAgent, vmlift, writeCodeFile, type Receiver } from '../../agent/harness.ts';
import { Prng } from './prng.ts';
import { MARK, deepJson } from './hostile-values.ts';
import { hostileHello, mutatedFrame, validFrame, bombFrame } from './data-inputs.ts';
import { controlInput, type ControlSource } from './control-inputs.ts';
import { RawHttp, tlsConnect } from './http-raw.ts';
import { FuzzedReceiver } from './receiver-process.ts';
import { WIRE_VERSION } from '../../../src/transfer/wire-version.ts';

export interface FuzzOptions {
  seed: number;
  /** Inputs in all (frames, requests, connections). */
  inputs: number;
  /** Concurrent connections held open at once in the connection-flood case. */
  connections: number;
  /** Drip interval of the slow clients, ms. */
  dripMs: number;
  /** Agent cycles of the legitimate source. */
  legitCycles: number;
  /** Peak RSS the receiver must stay under, MiB. */
  rssBoundMiB: number;
  log?: (line: string) => void;
}

export interface FuzzReport {
  seed: number;
  inputs: number;
  byArea: Record<string, number>;
  outcomes: Record<string, number>;
  findings: string[];
  baselineRssMiB: number;
  peakRssMiB: number;
  rssBoundMiB: number;
  slowloris: Record<string, number>;
  legit: { cycles: number; identical: number };
  floodAnswerMs: number | null;
  /** The longest wait for an answer, by kind (ms). */
  slowestMs: Record<string, number>;
  seconds: number;
}

const MiB = 1 << 20;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

class Tally {
  readonly outcomes = new Map<string, number>();
  readonly findings: string[] = [];
  readonly byArea = new Map<string, number>();
  inputs = 0;
  count(area: string, n = 1): void { this.inputs += n; this.byArea.set(area, (this.byArea.get(area) ?? 0) + n); }
  outcome(o: string): void { this.outcomes.set(o, (this.outcomes.get(o) ?? 0) + 1); }
  finding(f: string): void { if (this.findings.length < 50) this.findings.push(f); }
  readonly slowestMs = new Map<string, number>();
  slowest(what: string, ms: number): void { this.slowestMs.set(what, Math.max(ms, this.slowestMs.get(what) ?? 0)); }
}

/** Frames the receiver sent on a data connection, and how it ended. */
class DataPeer {
  readonly frames: { type: number; msg: Record<string, unknown> }[] = [];
  closed = false;
  private readonly reader = new FrameAssembler(64 * 1024);
  private wake: (() => void) | null = null;
  constructor(readonly s: tls.TLSSocket) {
    s.on('data', (d: Buffer) => {
      try {
        this.reader.push(d);
        for (let f = this.reader.next(); f; f = this.reader.next()) {
          let msg: Record<string, unknown> = {};
          try { msg = JSON.parse(f.body.toString('utf8')) as Record<string, unknown>; } catch { msg = { unparsable: true }; }
          this.frames.push({ type: f.type, msg });
        }
      } catch { this.frames.push({ type: -1, msg: { badFrame: true } }); }
      this.wake?.();
    });
    s.on('close', () => { this.closed = true; this.wake?.(); });
    s.on('error', () => undefined);
  }
  /** Wait until `pred` holds for a frame (returned), an ERROR frame came, the socket closed, or the time is up. */
  async until(pred: (f: { type: number; msg: Record<string, unknown> }) => boolean, ms: number): Promise<{ type: number; msg: Record<string, unknown> } | 'closed' | 'timeout'> {
    const deadline = Date.now() + ms;
    for (let i = 0; ; ) {
      for (; i < this.frames.length; i++) {
        const f = this.frames[i]!;
        if (pred(f) || f.type === FRAME.ERROR) return f;
      }
      if (this.closed) return 'closed';
      const left = deadline - Date.now();
      if (left <= 0) return 'timeout';
      await new Promise<void>((r) => { const t = setTimeout(r, left); this.wake = () => { clearTimeout(t); this.wake = null; r(); }; });
    }
  }
  async write(b: Buffer): Promise<void> {
    if (this.s.destroyed) return;
    if (!this.s.write(b)) await new Promise<void>((r) => { this.s.once('drain', r); this.s.once('close', r); });
  }
}

function outcomeOf(f: { type: number; msg: Record<string, unknown> } | 'closed' | 'timeout', ok: string): string {
  if (f === 'closed' || f === 'timeout') return f;
  if (f.type === FRAME.ERROR) return `refused ${String(f.msg.code)}`;
  return ok;
}

export async function runFuzz(o: FuzzOptions): Promise<FuzzReport> {
  const log = o.log ?? (() => undefined);
  const t0 = Date.now();
  const root = await mkdtemp(join(tmpdir(), 'vmlift-fuzz-'));
  const dataDir = join(root, 'rx');
  const cwd = join(root, 'cwd');
  const outside = join(root, 'outside');
  await mkdir(cwd); await mkdir(outside);
  await writeFile(join(outside, 'sentinel'), 'untouched');
  const tally = new Tally();
  const rng = new Prng(o.seed);
  const rx = await FuzzedReceiver.start(dataDir, cwd);
  const { controlPort, dataPort } = rx.facts;
  const code = rx.facts.activationCode!.code;
  await new Promise((r) => setTimeout(r, 500));
  const baselineRssMiB = rx.memory().rssKiB / 1024;
  log(`receiver pid ${rx.pid} on ${controlPort}/${dataPort}, RSS ${baselineRssMiB.toFixed(0)} MiB at start; seed ${o.seed}, ${o.inputs} inputs`);
  const slowloris: Record<string, number> = {};
  let floodAnswerMs: number | null = null;
  const legit = { cycles: 0, identical: 0 };
  try {
    const target = { host: '127.0.0.1', port: controlPort, fingerprint: rx.fingerprint };
    const reg = async (sourceId: string): Promise<ControlSource> => ({ sourceId, credential: (await new ControlClient(target).register({ sourceId, code })).credential });
    const disks: DiskSpec[] = [{ disk: 0, capacity: 8 * MiB }, { disk: 1, capacity: MiB + 512 }];
    const dataSources = await Promise.all([0, 1, 2, 3, 4, 5, 6, 7].map((i) => reg(`datafz-${i}`)));
    const ctlSources = await Promise.all([0, 1, 2].map((i) => reg(`ctlfz-${i}`)));
    const bombSource = await reg('bombfz');
    const begin = (s: ControlSource) => new ControlClient(target, s).beginCycle({ cycleId: 'c1', disks });
    await Promise.all([...dataSources, bombSource].map(begin));

    // budgets: most inputs are data frames and control requests; unauthenticated connections cost a TLS handshake each
    const budget = { data: Math.round(o.inputs * 0.6), control: Math.round(o.inputs * 0.36), unauth: Math.max(200, Math.round(o.inputs * 0.04)) };
    const alive = async (): Promise<boolean> => {
      if (!rx.alive) return false;
      try { await new ControlClient(target, ctlSources[0]).whoami(); return true; } catch { return false; }
    };

    let checks = 0;
    const legitRun = legitCycles(o, root, rx, rng.fork(), legit, tally, log);
    const specials = specialCases(o, rx, bombSource, ctlSources[0]!, rng.fork(), tally, slowloris, (ms) => { floodAnswerMs = ms; }, log);
    const workers: Promise<void>[] = [];
    for (let i = 0; i < dataSources.length; i++) workers.push(dataWorker(rng.fork(), dataPort, dataSources[i]!, disks, budget, tally, () => begin(dataSources[i]!)));
    for (let i = 0; i < 2; i++) workers.push(unauthWorker(rng.fork(), dataPort, dataSources[0]!, ctlSources[1]!, budget, tally));
    for (let i = 0; i < 8; i++) workers.push(controlWorker(rng.fork(), controlPort, ctlSources[i % ctlSources.length]!, ctlSources, code, budget, tally));
    const progress = setInterval(() => {
      const m = rx.memory();
      log(`${tally.inputs} inputs (${JSON.stringify(Object.fromEntries(tally.byArea))}), RSS ${(m.rssKiB / 1024).toFixed(0)} MiB (peak ${(rx.peakRssKiB / 1024).toFixed(0)}), ${Math.round((Date.now() - t0) / 1000)} s`);
      if (!rx.alive) log(`receiver exited: ${JSON.stringify(rx.exit)}`);
      // alive and answering a real call, every 10 s while the inputs run
      void alive().then((ok) => { checks++; if (!ok) tally.finding(`the receiver did not answer whoami at ${Math.round((Date.now() - t0) / 1000)} s (exit ${JSON.stringify(rx.exit)})`); });
    }, 10_000);
    try {
      await Promise.all([...workers, specials, legitRun]);
    } finally { clearInterval(progress); }
    log(`the receiver answered ${checks} liveness checks during the run`);

    // the checks
    if (!(await alive())) tally.finding(`the receiver does not answer after the run (exit ${JSON.stringify(rx.exit)}): ${rx.stderrTail.slice(-2000)}`);
    for (const l of rx.errorLines) tally.finding(`receiver error log: ${l.slice(0, 400)}`);
    for (const f of await filesUnder(root)) {
      if (f.includes(MARK)) tally.finding(`a file named after a fuzzed id: ${f}`);
      const rel = relative(root, f);
      if (!rel.startsWith('rx/') && !rel.startsWith('agent/') && !rel.startsWith('exports/') && rel !== 'outside/sentinel' && rel !== 'source.img' && rel !== 'code') tally.finding(`a file outside the data folder: ${rel}`);
    }
    for (const f of (await readdir(tmpdir())).filter((n) => n.includes(MARK))) tally.finding(`a file named after a fuzzed id in ${tmpdir()}: ${f}`);
    if ((await readdir(cwd)).length) tally.finding(`the receiver wrote into its working folder: ${(await readdir(cwd)).join(', ')}`);
    if ((await readFile(join(outside, 'sentinel'), 'utf8')) !== 'untouched') tally.finding('a file outside the data folder changed');
    for (const n of await readdir(join(dataDir, 'sources'))) if (!/^[a-z0-9][a-z0-9-]{0,63}\.json$/.test(n)) tally.finding(`a source record with a bad name: ${n}`);
    rx.sample();
    if (rx.slowestFlushMs) tally.slowest('store flush (receiver log)', rx.slowestFlushMs);
    if (rx.peakRssKiB / 1024 > o.rssBoundMiB) tally.finding(`peak RSS ${(rx.peakRssKiB / 1024).toFixed(0)} MiB is above the bound of ${o.rssBoundMiB} MiB`);
    if (legit.identical !== o.legitCycles) tally.finding(`the legitimate source: ${legit.identical} of ${o.legitCycles} cycles exported bit-identical`);
  } catch (e) {
    tally.finding(`the fuzzer itself failed: ${(e as Error).stack ?? String(e)}; receiver: ${rx.stderrTail.slice(-1500)}`);
  } finally {
    await rx.stop();
    await rm(root, { recursive: true, force: true });
  }
  return {
    seed: o.seed, inputs: tally.inputs, byArea: Object.fromEntries(tally.byArea), outcomes: Object.fromEntries([...tally.outcomes].sort((a, b) => b[1] - a[1])),
    findings: tally.findings, baselineRssMiB: Math.round(baselineRssMiB), peakRssMiB: Math.round(rx.peakRssKiB / 1024), rssBoundMiB: o.rssBoundMiB,
    slowloris, legit, floodAnswerMs, slowestMs: Object.fromEntries(tally.slowestMs), seconds: Math.round((Date.now() - t0) / 1000),
  };
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...await filesUnder(p));
    else out.push(p);
  }
  return out;
}

/** Authenticated data sessions: valid frames with mutated ones among them; a connection is kept until refused. */
async function dataWorker(r: Prng, port: number, src: ControlSource, disks: DiskSpec[], budget: { data: number },
  tally: Tally, reopen: () => Promise<unknown>): Promise<void> {
  let seq = 0;
  while (budget.data > 0) {
    let peer: DataPeer;
    try { peer = new DataPeer(await tlsConnect(port)); } catch (e) { tally.finding(`data connect failed: ${(e as Error).message}`); return; }
    const streamId = r.bytes(4).toString('hex');
    await peer.write(encodeJsonFrame(FRAME.HELLO, { sourceId: src.sourceId, credential: src.credential, cycleId: 'c1', streamId , wireVersion: WIRE_VERSION }));
    tally.count('data-hello');
    const helloAt = Date.now();
    // READY waits for the previous connection of the cycle to be flushed (syncfs): slow on a loaded machine
    const ready = await peer.until((f) => f.type === FRAME.READY, 120_000);
    tally.slowest('READY after HELLO', Date.now() - helloAt);
    const ro = outcomeOf(ready, 'ready');
    if (ro !== 'ready') {
      tally.outcome(`data hello: ${ro}`);
      peer.s.destroy();
      if (ro === 'refused CYCLE_NOT_OPEN') { await reopen().catch(() => undefined); continue; }
      if (ro === 'refused CYCLE_BUSY') { await new Promise((res) => setTimeout(res, 200)); continue; }
      tally.finding(`an authenticated HELLO was answered ${ro}`);
      continue;
    }
    // batches on this connection until one is refused
    for (let batch = 0; batch < 50 && budget.data > 0 && !peer.closed; batch++) {
      // Mostly one mutated frame right after READY: a refusal ends the connection, and with nothing written
      // before it there is no store flush to wait for. Otherwise valid frames (a few, or a long run), then
      // perhaps a mutated one.
      const alone = r.chance(0.6);
      const n = alone ? 1 : Math.min(budget.data, r.chance(0.2) ? r.range(100, 400) : r.range(2, 30));
      const mutate = alone || r.chance(0.5);
      let endAfter = false;
      let kinds = 'valid';
      let sent = 0;
      for (let i = 0; i < n; i++) {
        seq++;
        if (mutate && i === n - 1) {
          const m = mutatedFrame(r, disks, seq);
          kinds = m.kind;
          await peer.write(m.frame);
          endAfter = m.endAfter === true;
        } else await peer.write(validFrame(r, disks, seq).frame);
        sent++;
      }
      budget.data -= sent;
      tally.count('data-frames', sent);
      if (endAfter) { peer.s.end(); }
      else await peer.write(encodeJsonFrame(FRAME.SYNC, { token: -seq }));
      const token = -seq;
      const sentAt = Date.now();
      const f = await peer.until((x) => x.type === FRAME.ACK && x.msg.token === token, 300_000);
      tally.slowest(endAfter ? 'answer to a truncated frame' : 'ACK or ERROR after a batch', Date.now() - sentAt);
      const oc = outcomeOf(f, 'accepted');
      tally.outcome(`data ${kinds}: ${oc}`);
      if (Date.now() - sentAt > 10_000) tally.outcome(`data ${kinds}: ${oc} after ${Math.round((Date.now() - sentAt) / 1000)} s (${n} frames)`);
      if (oc === 'refused INTERNAL') tally.finding(`data frame (${kinds}) answered INTERNAL: ${JSON.stringify((f as { msg: unknown }).msg).slice(0, 300)}`);
      if (kinds === 'valid' && oc !== 'accepted') tally.finding(`a batch of valid frames was answered ${oc} ${JSON.stringify(typeof f === 'object' ? f.msg : f).slice(0, 200)}`);
      if (oc === 'timeout') { tally.finding(`data session (${kinds}, ${n} frames) got no answer within 300 s`); break; }
      if (oc !== 'accepted' || endAfter) break;
    }
    peer.s.destroy();
  }
}

/** Connections that never get past the HELLO: hostile first frames, one per connection (the receiver closes after refusing). */
async function unauthWorker(r: Prng, port: number, known: ControlSource, other: ControlSource, budget: { unauth: number }, tally: Tally): Promise<void> {
  while (budget.unauth-- > 0) {
    if (r.chance(0.05)) {
      // not TLS at all
      const s = net.connect(port, '127.0.0.1');
      s.on('error', () => undefined);
      await new Promise<void>((res) => s.once('connect', () => res()));
      s.end(r.bytes(r.range(1, 2000)));
      await new Promise<void>((res) => { s.once('close', () => res()); setTimeout(() => { s.destroy(); res(); }, 20_000); });
      tally.count('data-unauth');
      tally.outcome('data not TLS: closed');
      continue;
    }
    let peer: DataPeer;
    try { peer = new DataPeer(await tlsConnect(port)); } catch (e) { tally.finding(`data connect failed: ${(e as Error).message}`); return; }
    const h = hostileHello(r, { ...known, cycleId: 'c1' }, other);
    await peer.write(h.frame);
    if (h.endAfter) peer.s.end();
    tally.count('data-unauth');
    const f = await peer.until((x) => x.type === FRAME.READY, 30_000);
    const oc = outcomeOf(f, 'ready');
    tally.outcome(`data ${h.kind}: ${oc}`);
    if (oc === 'refused INTERNAL') tally.finding(`hostile HELLO (${h.kind}) answered INTERNAL`);
    if (oc === 'ready') tally.finding(`hostile HELLO (${h.kind}) was let in`);
    if (oc === 'timeout') tally.finding(`hostile HELLO (${h.kind}) got no answer within 30 s`);
    peer.s.destroy();
  }
}

async function controlWorker(r: Prng, port: number, src: ControlSource, all: ControlSource[], code: string, budget: { control: number }, tally: Tally): Promise<void> {
  const http = new RawHttp(port);
  while (budget.control-- > 0) {
    const inp = controlInput(r, src, all.filter((s) => s !== src), code);
    tally.count('control');
    let a: Awaited<ReturnType<RawHttp['request']>>;
    const sentAt = Date.now();
    try { a = await http.request(inp.head, inp.body, inp.kind.endsWith('+short-body') ? 1000 : 60_000); } catch (e) {
      http.close();
      const timedOut = (e as Error).message === 'timeout';
      tally.outcome(`control ${inp.kind}: ${timedOut ? 'timed out' : 'connection failed'}`);
      if (timedOut && !inp.kind.endsWith('+short-body')) tally.finding(`control ${inp.kind} got no answer within 60 s: ${inp.head.toString('latin1').slice(0, 200)}`);
      continue;
    }
    tally.slowest(`control ${inp.kind.split('+')[0]}`, Date.now() - sentAt);
    if (a === 'closed') { tally.outcome(`control ${inp.kind}: closed`); continue; }
    let errCode = '';
    try { errCode = String((JSON.parse(a.body.toString('utf8')) as { error?: { code?: string } }).error?.code ?? ''); } catch { errCode = a.status === 200 ? '' : 'non-JSON'; }
    tally.outcome(`control ${inp.kind}: ${a.status}${errCode ? ` ${errCode}` : ''}`);
    // 507 NO_SPACE and 503 BUSY (bodies of other requests fill the receiver's budget) are coded, transient refusals
    if (a.status === 0 || (a.status >= 500 && a.status !== 507 && !(a.status === 503 && errCode === 'BUSY'))) {
      tally.finding(`control ${inp.kind} answered ${a.status} ${a.body.toString('utf8').slice(0, 300)} to ${inp.head.toString('latin1').slice(0, 300)} (${inp.body.length} body bytes)`);
    }
  }
  http.close();
}

/** The legitimate source: `vmlift agent sync` cycles of a file while everything else runs; each image exported and compared. */
async function legitCycles(o: FuzzOptions, root: string, rx: FuzzedReceiver, r: Prng, out: { cycles: number; identical: number }, tally: Tally, log: (l: string) => void): Promise<void> {
  const file = join(root, 'source.img');
  const size = 24 * MiB;
  const img = Buffer.alloc(size);
  for (let off = 0; off < size; off += 64 * 1024) if (r.chance(0.7)) r.bytes(64 * 1024).copy(img, off);
  const codeFile = await writeCodeFile(join(root, 'code'), rx.facts.activationCode!.code);
  await mkdir(join(root, 'exports'));
  const receiver = { address: `127.0.0.1:${rx.facts.controlPort}`, fingerprint: rx.fingerprint } as unknown as Receiver;
  for (let c = 1; c <= o.legitCycles; c++) {
    if (c > 1) for (let i = 0; i < 64; i++) r.bytes(4096).copy(img, r.int(size / 4096) * 4096);
    await writeFile(file, img);
    const want = sha256(img);
    const run = await runAgent({ devices: [file], receiver, stateDir: join(root, 'agent'), codeFile, sourceId: 'legit', extra: ['--compression', '7'] });
    out.cycles++;
    if (run.exit !== 0 || !run.report) { tally.finding(`legitimate agent cycle ${c} failed (exit ${run.exit}): ${run.stderr.slice(-800)}`); continue; }
    const dest = join(root, 'exports', `legit-${run.report.imageId}.raw`);
    const ex = await vmlift(['image', 'export', '--data-dir', join(root, 'rx'), '--source', 'legit', '--image', run.report.imageId, '--output', dest]);
    if (ex.code !== 0) { tally.finding(`export of the legitimate image ${run.report.imageId} failed: ${ex.stderr.slice(-500)}`); continue; }
    const got = await fileSha(dest);
    if (got === want) out.identical++;
    else tally.finding(`legitimate cycle ${c}: image ${run.report.imageId} exports ${got}, the source is ${want}`);
    log(`legitimate cycle ${c}: image ${run.report.imageId} ${got === want ? 'bit-identical' : 'DIFFERS'} (${run.report.attempts} attempts, ${run.report.resentBytes} bytes re-sent)`);
    await rm(dest);
  }
}

function fileSha(p: string): Promise<string> {
  return new Promise((res, rej) => {
    const h = createHash('sha256');
    createReadStream(p).on('data', (d) => h.update(d)).on('end', () => res(h.digest('hex'))).on('error', rej);
  });
}

/** Fixed hostile cases, one after the other (each counts as inputs too). */
async function specialCases(o: FuzzOptions, rx: FuzzedReceiver, dataSrc: ControlSource, ctl: ControlSource, r: Prng, tally: Tally,
  slow: Record<string, number>, setFloodMs: (ms: number) => void, log: (l: string) => void): Promise<void> {
  const { controlPort, dataPort } = rx.facts;
  const target = { host: '127.0.0.1', port: controlPort, fingerprint: rx.fingerprint };
  const whoami = async (): Promise<number> => { const t = Date.now(); await new ControlClient(target, ctl).whoami(); return Date.now() - t; };
  const auth = `x-vmlift-source: ${ctl.sourceId}\r\nauthorization: Bearer ${ctl.credential}\r\nx-vmlift-wire: ${WIRE_VERSION}\r\n`;

  // slow-drip clients start first: they run while the rest goes on
  const drips = Promise.all([
    drip('control headers', controlPort, true, Buffer.from(`GET /v1/whoami HTTP/1.1\r\nHost: x\r\n${'x-a: b\r\n'.repeat(200)}`), o.dripMs, slow, tally),
    drip('data HELLO', dataPort, true, encodeJsonFrame(FRAME.HELLO, { sourceId: dataSrc.sourceId, credential: dataSrc.credential, cycleId: 'c1', streamId: 'abc' , wireVersion: WIRE_VERSION }), o.dripMs, slow, tally),
    drip('TLS handshake never started', dataPort, false, Buffer.alloc(0), o.dripMs, slow, tally),
    drip('control TLS handshake never started', controlPort, false, Buffer.alloc(0), o.dripMs, slow, tally),
  ]);

  // 100 MiB bodies: claimed (only a little sent), and sent, unauthenticated and authenticated, several at once
  const big = async (what: string, head: string, send: number): Promise<void> => {
    const h = new RawHttp(controlPort);
    tally.count('control-big');
    try {
      const s = await h.socket();
      const spaces = Buffer.alloc(MiB, 0x20);
      const chunk = /chunked/.test(head) ? Buffer.concat([Buffer.from(`${MiB.toString(16)}\r\n`), spaces, Buffer.from('\r\n')]) : spaces;
      const p = h.request(head, undefined, 60_000);
      // an answer from the headers alone (the declared length) comes before the body is sent
      const early = await Promise.race([p.then(() => true, () => true), new Promise<boolean>((res) => setTimeout(() => res(false), 1000))]);
      for (let n = 0; n < send && !early; n += MiB) {
        if (s.destroyed) break;
        if (!s.write(chunk)) await new Promise<void>((res) => { s.once('drain', res); s.once('close', res); });
      }
      const a = await p;
      const oc = a === 'closed' ? 'closed' : `${a.status} ${(() => { try { return (JSON.parse(a.body.toString()) as { error: { code: string } }).error.code; } catch { return ''; } })()}`;
      tally.outcome(`control ${what}: ${oc}`);
      if (a !== 'closed' && a.status >= 500 && a.status !== 507 && a.status !== 503) tally.finding(`${what} answered ${a.status}`);
    } catch (e) { tally.outcome(`control ${what}: ${(e as Error).message === 'timeout' ? 'timed out' : 'connection failed'}`); }
    h.close();
  };
  const claim = `content-length: ${100 * MiB}\r\ncontent-type: application/json\r\n`;
  await Promise.all([
    ...Array.from({ length: 4 }, () => big('100 MiB register body sent', `POST /v1/register HTTP/1.1\r\nHost: x\r\n${claim}\r\n`, 100 * MiB)),
    ...Array.from({ length: 4 }, () => big('100 MiB commit body sent', `POST /v1/cycles/c1/commit HTTP/1.1\r\nHost: x\r\n${auth}${claim}\r\n`, 100 * MiB)),
    big('100 MiB body claimed, 1 MiB sent', `POST /v1/register HTTP/1.1\r\nHost: x\r\n${claim}\r\n`, MiB),
    // no length declared: chunked, so the limit applies while reading
    ...Array.from({ length: 4 }, () => big('100 MiB chunked commit body sent', `POST /v1/cycles/c1/commit HTTP/1.1\r\nHost: x\r\n${auth}transfer-encoding: chunked\r\n\r\n`, 100 * MiB)),
  ]);
  log(`100 MiB bodies done; peak RSS ${(rx.peakRssKiB / 1024).toFixed(0)} MiB`);

  // JSON nested 10^5 deep, where the receiver keeps it (a commit's meta) and where it does not
  const h = new RawHttp(controlPort);
  for (const [what, path, body] of [
    ['register', '/v1/register', deepJson(100_000, 'array')],
    ['begin', '/v1/cycles', `{"cycleId":"c1","disks":${deepJson(100_000, 'array')}}`],
    ['commit meta', '/v1/cycles/c9/commit', `{"meta":${deepJson(100_000, 'object')}}`],
  ] as const) {
    tally.count('control-deep');
    try {
      const a = await h.request(`POST ${path} HTTP/1.1\r\nHost: x\r\n${auth}content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n`, Buffer.from(body));
      tally.outcome(`control deep JSON ${what}: ${a === 'closed' ? 'closed' : a.status}`);
      if (a !== 'closed' && a.status >= 500) tally.finding(`JSON nested 10^5 deep in ${what} answered ${a.status}: ${a.body.toString().slice(0, 200)}`);
    } catch (e) { tally.outcome(`control deep JSON ${what}: ${(e as Error).message}`); h.close(); }
  }
  // and inside a real cycle: begin, then commit with a deep meta (stored in image.json)
  try {
    await new ControlClient(target, ctl).beginCycle({ cycleId: 'deep', disks: [{ disk: 0, capacity: 4096 }] }).catch(() => undefined);
    const body = `{"meta":${deepJson(100_000, 'object')}}`;
    tally.count('control-deep');
    const a = await h.request(`POST /v1/cycles/deep/commit HTTP/1.1\r\nHost: x\r\n${auth}content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n`, Buffer.from(body));
    tally.outcome(`control deep JSON commit meta (open cycle): ${a === 'closed' ? 'closed' : a.status}`);
    if (a !== 'closed' && a.status >= 500) tally.finding(`a commit with meta nested 10^5 deep answered ${a.status}: ${a.body.toString().slice(0, 300)}`);
    await new ControlClient(target, ctl).abortCycle('deep', {}).catch(() => undefined);
  } catch (e) { tally.outcome(`control deep JSON commit meta: ${(e as Error).message}`); }
  h.close();

  // zstd bombs over an authenticated connection, one per connection
  for (let i = 0; i < 6; i++) {
    const peer = new DataPeer(await tlsConnect(dataPort));
    await peer.write(encodeJsonFrame(FRAME.HELLO, { sourceId: dataSrc.sourceId, credential: dataSrc.credential, cycleId: 'c1', streamId: `b0${i}` , wireVersion: WIRE_VERSION }));
    const ready = await peer.until((f) => f.type === FRAME.READY, 30_000);
    if (outcomeOf(ready, 'ready') !== 'ready') { peer.s.destroy(); continue; }
    const t = Date.now();
    await peer.write(bombFrame(r, [{ disk: 0, capacity: 8 * MiB }], 1));
    tally.count('data-bomb');
    const f = await peer.until(() => false, 30_000);
    tally.outcome(`data zstd bomb: ${outcomeOf(f, '?')} in ${Date.now() - t < 2000 ? '< 2 s' : '≥ 2 s'}`);
    peer.s.destroy();
  }

  // thousands of connections at once: idle TCP, idle TLS, and TLS ones whose first frame claims the largest length
  const socks: net.Socket[] = [];
  const n = o.connections;
  const open = async (port: number, kind: 'tcp' | 'tls' | 'big'): Promise<void> => {
    tally.count('connections');
    try {
      if (kind === 'tcp') {
        const s = net.connect(port, '127.0.0.1'); s.on('error', () => undefined); socks.push(s);
        await new Promise<void>((res) => { s.once('connect', () => res()); s.once('error', () => res()); });
        return;
      }
      const s = await tlsConnect(port, 60_000); socks.push(s);
      if (kind === 'big') {
        const head = Buffer.alloc(5); head.writeUInt32BE(MAX_FRAME, 0); head[4] = FRAME.HELLO;
        s.write(Buffer.concat([head, Buffer.alloc(MiB, 0x20)]));
      }
    } catch { tally.outcome('flood connect failed'); }
  };
  const plan: [number, 'tcp' | 'tls' | 'big'][] = [];
  for (let i = 0; i < n; i++) plan.push(i % 3 === 0 ? [controlPort, 'tcp'] : i % 3 === 1 ? [r.chance(0.5) ? controlPort : dataPort, 'tls'] : [dataPort, r.chance(0.5) ? 'big' : 'tcp']);
  for (let i = 0; i < plan.length; i += 100) await Promise.all(plan.slice(i, i + 100).map(([p, k]) => open(p, k)));
  const live = socks.filter((s) => !s.destroyed).length;
  try {
    const ms = await whoami();
    setFloodMs(ms);
    log(`${live} of ${n} flood connections open; a legitimate whoami answered in ${ms} ms; peak RSS ${(rx.peakRssKiB / 1024).toFixed(0)} MiB`);
  } catch (e) { tally.finding(`with ${live} connections open a legitimate whoami failed: ${(e as Error).message}`); }
  tally.outcome(`flood: ${live} of ${n} connections open at once`);
  await new Promise((res) => setTimeout(res, 2000));
  for (const s of socks) s.destroy();
  await drips;
}

/**
 * A client that drips `bytes` one byte every `ms` (nothing when `tls` is false: a TCP connection
 * that never starts the handshake); resolves when the server closes it, noting the seconds.
 */
async function drip(what: string, port: number, useTls: boolean, bytes: Buffer, ms: number, slow: Record<string, number>, tally: Tally): Promise<void> {
  const t = Date.now();
  tally.count('slowloris');
  const s: net.Socket = useTls ? await tlsConnect(port) : net.connect(port, '127.0.0.1');
  s.on('error', () => undefined);
  s.on('data', () => undefined);
  const closed = new Promise<void>((res) => s.once('close', () => res()));
  let i = 0;
  const limit = 200_000;
  const timer = setInterval(() => { if (i < bytes.length && !s.destroyed) s.write(bytes.subarray(i, ++i)); }, ms);
  const cut = setTimeout(() => s.destroy(), limit);
  await closed;
  clearInterval(timer); clearTimeout(cut);
  const secs = Math.round((Date.now() - t) / 100) / 10;
  slow[what] = secs;
  tally.outcome(`slowloris ${what}: ${secs * 1000 >= limit ? 'never closed' : 'closed by the receiver'}`);
  if (secs * 1000 >= limit) tally.finding(`a slow client (${what}) was never timed out`);
}
