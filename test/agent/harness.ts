/**
 * Real processes for the agent's acceptance tests: a `vmlift receiver serve` child on free
 * loopback ports (restartable on the same ports and data dir), and `vmlift agent sync` children
 * whose JSON lines are collected.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** The vmlift command (runs dist/ when it is fresh, else the sources; exec keeps one pid for kill -9). */
export const VMLIFT = join(ROOT, 'bin/vmlift');
const execFileP = promisify(execFile);

const children = new Set<ChildProcess>();
function track(p: ChildProcess): ChildProcess {
  children.add(p);
  p.once('exit', () => children.delete(p));
  return p;
}
/** Kill every child process this harness started and that still runs (for `after` hooks). */
export async function killChildren(): Promise<void> {
  await Promise.all([...children].map((p) => killWait(p, 'SIGKILL')));
}
process.once('exit', () => { for (const p of children) p.kill('SIGKILL'); });

/**
 * `n` distinct free ports: every listener stays open until all are taken, so two calls cannot get
 * the same port back (a receiver given one port for both its control and data listeners hung a CI run).
 */
export async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(Array.from({ length: n }, () => new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => resolve(s));
  })));
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

export async function vmlift(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await execFileP(VMLIFT, args, { env: { ...process.env, ...env }, maxBuffer: 64 << 20 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof x.code === 'number' ? x.code : 1, stdout: x.stdout ?? '', stderr: x.stderr ?? '' };
  }
}

export class Receiver {
  proc: ChildProcess | undefined;
  fingerprint = '';
  code = '';
  stderr = '';
  private constructor(readonly dataDir: string, readonly controlPort: number, readonly dataPort: number) {}

  static async start(dataDir: string): Promise<Receiver> {
    const [controlPort, dataPort] = await freePorts(2);
    const r = new Receiver(dataDir, controlPort!, dataPort!);
    await r.spawn();
    const info = await vmlift(['receiver', 'info', '--data-dir', dataDir, '--json']);
    if (info.code !== 0) throw new Error(`receiver info failed: ${info.stderr}`);
    const j = JSON.parse(info.stdout) as { fingerprint: string; codes?: { code: string }[]; code?: string };
    r.fingerprint = j.fingerprint;
    r.code = j.code ?? j.codes?.[0]?.code ?? '';
    return r;
  }

  get address(): string { return `127.0.0.1:${this.controlPort}`; }

  async spawn(): Promise<void> {
    const p = spawn(VMLIFT, ['receiver', 'serve', '--data-dir', this.dataDir, '--listen', '127.0.0.1',
      '--control-port', String(this.controlPort), '--data-port', String(this.dataPort)], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMLIFT_LOG_LEVEL: 'info' } });
    this.proc = track(p);
    p.stderr!.setEncoding('utf8');
    p.stdout!.setEncoding('utf8');
    p.stderr!.on('data', (d: string) => { this.stderr += d; if (this.stderr.length > 1 << 20) this.stderr = this.stderr.slice(-(1 << 19)); });
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const check = (d: string): void => {
        out += d;
        if (/listening/i.test(out)) { p.stdout!.off('data', check); p.stderr!.off('data', check); resolve(); }
      };
      p.stdout!.on('data', check);
      p.stderr!.on('data', check);
      p.once('exit', (c) => reject(new Error(`receiver exited with ${c} before listening: ${out}${this.stderr}`)));
    });
  }

  kill9(): Promise<void> {
    return killWait(this.proc, 'SIGKILL');
  }

  async stop(): Promise<void> {
    await killWait(this.proc, 'SIGTERM');
    this.proc = undefined;
  }
}

export function killWait(p: ChildProcess | undefined, sig: NodeJS.Signals): Promise<void> {
  if (!p || p.exitCode !== null || p.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    p.once('exit', () => resolve());
    p.kill(sig);
  });
}

export interface AgentRun {
  proc: ChildProcess;
  lines: Record<string, unknown>[];
  stderr: string;
  /** Resolves with the exit code (or the signal name). */
  done: Promise<number | string>;
}

export interface AgentArgs {
  devices: string[];
  receiver: Receiver;
  stateDir: string;
  codeFile: string;
  sourceId?: string;
  extra?: string[];
  fingerprint?: string;
  env?: NodeJS.ProcessEnv;
  /** Pass --once (default true). */
  once?: boolean;
  /** Called on every JSON line (e.g. to kill the agent at some progress). */
  onLine?: (line: Record<string, unknown>, run: AgentRun) => void;
}

export async function writeCodeFile(path: string, code: string): Promise<string> {
  await writeFile(path, `${code}\n`, { mode: 0o600 });
  return path;
}

export function startAgent(a: AgentArgs): AgentRun {
  const args = ['agent', 'sync', ...a.devices.flatMap((d) => ['--device', d]), '--receiver', a.receiver.address,
    '--fingerprint', a.fingerprint ?? a.receiver.fingerprint, '--code-file', a.codeFile, '--state-dir', a.stateDir,
    '--source-id', a.sourceId ?? 'agent-test', '--json', ...(a.once === false ? [] : ['--once']), '--retry-for', '2m', ...(a.extra ?? [])];
  const proc = spawn(VMLIFT, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...a.env } });
  track(proc);
  const run: AgentRun = { proc, lines: [], stderr: '', done: Promise.resolve(0) };
  let buf = '';
  proc.stdout!.setEncoding('utf8');
  proc.stderr!.setEncoding('utf8');
  proc.stdout!.on('data', (d: string) => {
    buf += d;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!line.trim()) continue;
      let j: Record<string, unknown>;
      try { j = JSON.parse(line) as Record<string, unknown>; } catch { j = { type: 'text', text: line }; }
      run.lines.push(j);
      a.onLine?.(j, run);
    }
  });
  proc.stderr!.on('data', (d: string) => { run.stderr += d; });
  run.done = new Promise((resolve) => proc.once('exit', (c, s) => resolve(c ?? s ?? -1)));
  return run;
}

/** Run an agent to its end; returns the run (its `cycle` line holds the report). */
export async function runAgent(a: AgentArgs): Promise<AgentRun & { exit: number | string; report: CycleLine | undefined }> {
  const run = startAgent(a);
  const exit = await run.done;
  const report = run.lines.find((l) => l.type === 'cycle') as CycleLine | undefined;
  return { ...run, exit, report };
}

export interface CycleLine {
  type: 'cycle';
  imageId: string;
  cycleId: string;
  baseImageId: string | null;
  changedBytes: number;
  payloadBytes: number;
  wireBytes: number;
  extents: number;
  resentBytes: number;
  attempts: number;
  resumedFromState: boolean;
  disks: { disk: number; capacity: number; readBytes: number; changedBytes: number; sentBytes: number; sha256?: string }[];
}
