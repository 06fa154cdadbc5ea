/**
 * The real processes of the kill -9 matrix: `vmlift receiver serve`, `vmlift agent sync` and
 * `vmlift connector serve` as children (run from the sources), each killable with SIGKILL from
 * outside or armed with a crash point (VMLIFT_TEST_CRASH_AT), and the CLI for one-off commands.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PROJECT_ROOT } from '../../src/util/root.ts';

export const VMLIFT = join(PROJECT_ROOT, 'bin/vmlift');
const live = new Set<ChildProcess>();
process.once('exit', () => { for (const p of live) p.kill('SIGKILL'); });

export interface Exit { code: number | null; signal: NodeJS.Signals | null }

function childEnv(env: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = { ...process.env, VMLIFT_FROM_SOURCE: '1', ...env };
  if (!env.VMLIFT_TEST_CRASH_AT) delete e.VMLIFT_TEST_CRASH_AT;
  return e;
}

export function track(p: ChildProcess): Promise<Exit> {
  live.add(p);
  return new Promise((resolve) => p.once('exit', (code, signal) => { live.delete(p); resolve({ code, signal }); }));
}

export function killWait(p: ChildProcess | undefined, sig: NodeJS.Signals): Promise<void> {
  if (!p || p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => { p.once('exit', () => resolve()); p.kill(sig); });
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)); });
  });
}

/** Runs `vmlift ARGS` to its end. */
export function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Exit & { stdout: string; stderr: string }> {
  const p = spawn(VMLIFT, args, { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv(env) });
  let stdout = ''; let stderr = '';
  p.stdout!.on('data', (d) => { stdout += d; });
  p.stderr!.on('data', (d) => { stderr += d; });
  return track(p).then((x) => ({ ...x, stdout, stderr }));
}

/** `vmlift receiver serve` on fixed loopback ports and one data folder, restartable (as after a power cut). */
export class ReceiverProc {
  proc: ChildProcess | undefined;
  exited: Promise<Exit> = Promise.resolve({ code: 0, signal: null });
  fingerprint = '';
  code = '';
  log = '';
  private listeners: ((line: string) => void)[] = [];
  private constructor(readonly dataDir: string, readonly controlPort: number, readonly dataPort: number) {}

  static async create(dataDir: string): Promise<ReceiverProc> {
    const r = new ReceiverProc(dataDir, await freePort(), await freePort());
    await r.start();
    return r;
  }

  get address(): string { return `127.0.0.1:${this.controlPort}`; }
  get running(): boolean { return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null; }

  /** Calls `fn` with every log line from now on until it returns true. */
  watch(fn: (line: string) => boolean): void {
    const l = (line: string): void => { if (fn(line)) this.listeners = this.listeners.filter((x) => x !== l); };
    this.listeners.push(l);
  }

  async start(crashAt?: string): Promise<void> {
    const p = spawn(VMLIFT, ['receiver', 'serve', '--data-dir', this.dataDir, '--listen', '127.0.0.1',
      '--control-port', String(this.controlPort), '--data-port', String(this.dataPort), '--json'],
    { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv({ VMLIFT_LOG_LEVEL: 'info', ...(crashAt ? { VMLIFT_TEST_CRASH_AT: crashAt } : {}) }) });
    this.proc = p;
    this.exited = track(p);
    let buf = '';
    p.stderr!.setEncoding('utf8');
    p.stderr!.on('data', (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i); buf = buf.slice(i + 1);
        this.log += `${line}\n`;
        if (this.log.length > 1 << 20) this.log = this.log.slice(-(1 << 19));
        for (const l of [...this.listeners]) l(line);
      }
    });
    const first = await new Promise<string>((resolve, reject) => {
      let out = '';
      p.stdout!.setEncoding('utf8');
      p.stdout!.on('data', (d: string) => { out += d; const i = out.indexOf('\n'); if (i >= 0) resolve(out.slice(0, i)); });
      void this.exited.then((x) => reject(new Error(`receiver exited (${x.code ?? x.signal}) before listening: ${this.log.slice(-2000)}`)));
    });
    const facts = JSON.parse(first) as { fingerprint: string; activationCode?: { code: string } | null };
    this.fingerprint = facts.fingerprint;
    if (facts.activationCode?.code) this.code = facts.activationCode.code;
  }

  kill9(): Promise<void> { return killWait(this.proc, 'SIGKILL'); }
  stop(): Promise<void> { return killWait(this.proc, 'SIGTERM'); }
}

export interface AgentRun { proc: ChildProcess; lines: Record<string, unknown>[]; stderr: string; done: Promise<Exit> }

/** `vmlift agent sync --once --json`; `onLine` sees every JSON line (e.g. to kill it at some progress). */
export function startAgent(args: string[], env: NodeJS.ProcessEnv = {}, onLine?: (l: Record<string, unknown>, run: AgentRun) => void): AgentRun {
  const proc = spawn(VMLIFT, ['agent', 'sync', ...args, '--json', '--once'], { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv(env) });
  const run: AgentRun = { proc, lines: [], stderr: '', done: track(proc) };
  let buf = '';
  proc.stdout!.setEncoding('utf8');
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => { run.stderr += d; });
  proc.stdout!.on('data', (d: string) => {
    buf += d;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i); buf = buf.slice(i + 1);
      if (!line.trim()) continue;
      let j: Record<string, unknown>;
      try { j = JSON.parse(line) as Record<string, unknown>; } catch { j = { type: 'text', text: line }; }
      run.lines.push(j);
      onLine?.(j, run);
    }
  });
  return run;
}

/** `vmlift connector serve` on a home made by `connector init`, and its local API. */
export class ConnectorProc {
  proc: ChildProcess | undefined;
  exited: Promise<Exit> = Promise.resolve({ code: 0, signal: null });
  stderr = '';
  constructor(readonly home: string) {}

  get running(): boolean { return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null; }

  async serve(crashAt?: string): Promise<void> {
    rmSync(join(this.home, 'api.json'), { force: true });
    const p = spawn(VMLIFT, ['connector', 'serve', '--home', this.home, '--api-port', '0', '--tick-ms', '200'],
      { stdio: ['ignore', 'ignore', 'pipe'], env: childEnv(crashAt ? { VMLIFT_TEST_CRASH_AT: crashAt } : {}) });
    this.proc = p;
    this.exited = track(p);
    this.stderr = '';
    p.stderr!.on('data', (d) => { this.stderr += d; if (this.stderr.length > 1 << 20) this.stderr = this.stderr.slice(-(1 << 19)); });
    for (let i = 0; i < 600 && !existsSync(join(this.home, 'api.json')); i++) {
      if (!this.running) throw new Error(`connector exited: ${this.stderr.slice(-2000)}`);
      await sleep(100);
    }
    if (!existsSync(join(this.home, 'api.json'))) throw new Error(`connector did not start: ${this.stderr.slice(-2000)}`);
  }

  async api<T>(method: string, path: string, body?: unknown): Promise<T> {
    const port = (JSON.parse(readFileSync(join(this.home, 'api.json'), 'utf8')) as { port: number }).port;
    const token = readFileSync(join(this.home, 'api-token'), 'utf8').trim();
    const res = await fetch(`http://127.0.0.1:${port}${path}`, {
      method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const j = await res.json() as T & { error?: { message: string } };
    if (res.status >= 400) throw new Error(`${method} ${path}: ${res.status} ${j.error?.message ?? ''}`);
    return j;
  }

  kill9(): Promise<void> { return killWait(this.proc, 'SIGKILL'); }
  stop(): Promise<void> { return killWait(this.proc, 'SIGTERM'); }
}
