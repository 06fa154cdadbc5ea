/**
 * Running vmlift's agent against a real receiver, both as child processes of the benchmark (the
 * commands users run), with exact CPU seconds and peak RSS per process: shared by the benchmarks
 * that time agent cycles.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { rm, readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
// the vmlift command users run (compiled dist/ when fresh: scripts/setup.sh builds it)
export const NODE = [fileURLToPath(new URL('../../bin/vmlift', import.meta.url))];
const TICK = Number((await execFileP('getconf', ['CLK_TCK'])).stdout.trim()) || 100;

export const log = (s: string): void => { process.stderr.write(`${s}\n`); };

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)); });
  });
}

export interface Usage { wall: number; cpu: number; maxRssMiB: number; stdout: string; code: number }

/** Run a command under /usr/bin/time: exact CPU seconds and peak RSS of the whole process. */
export async function timed(cmd: string[], env: NodeJS.ProcessEnv = {}): Promise<Usage> {
  const tf = join(tmpdir(), `vmlift-time-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const t0 = performance.now();
  const p = spawn('/usr/bin/time', ['-f', '%U %S %M', '-o', tf, ...cmd], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stdout = ''; let stderr = '';
  p.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
  p.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; if (stderr.length > 1 << 20) stderr = stderr.slice(-65536); });
  const code = await new Promise<number>((r) => p.once('exit', (c) => r(c ?? 1)));
  const wall = (performance.now() - t0) / 1000;
  const [u, s, m] = (await readFile(tf, 'utf8')).trim().split('\n').pop()!.split(' ').map(Number);
  await rm(tf, { force: true });
  if (code !== 0) throw new Error(`${cmd.join(' ')} failed (${code}): ${stderr.slice(-2000)}`);
  return { wall, cpu: u! + s!, maxRssMiB: m! / 1024, stdout, code };
}

export class Receiver {
  proc!: ChildProcess;
  fingerprint = '';
  code = '';
  port = 0;
  constructor(readonly dataDir: string) {}
  async start(): Promise<void> {
    this.port = await freePort();
    const dataPort = await freePort();
    this.proc = spawn(NODE[0]!, [...NODE.slice(1), 'receiver', 'serve', '--data-dir', this.dataDir, '--listen', '127.0.0.1',
      '--control-port', String(this.port), '--data-port', String(dataPort), '--json'], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, VMLIFT_LOG_LEVEL: 'warn' } });
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      this.proc.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; if (out.includes('\n')) resolve(out.split('\n')[0]!); });
      this.proc.once('exit', (c) => reject(new Error(`receiver exited (${c})`)));
    });
    const facts = JSON.parse(line) as { fingerprint: string; activationCode: { code: string } | null };
    this.fingerprint = facts.fingerprint;
    this.code = facts.activationCode?.code ?? '';
  }
  /** CPU seconds so far and peak RSS (VmHWM) of the receiver process. */
  async usage(): Promise<{ cpu: number; maxRssMiB: number }> {
    const stat = (await readFile(`/proc/${this.proc.pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
    const cpu = (Number(stat[11]) + Number(stat[12])) / TICK;
    const hwm = /VmHWM:\s+(\d+) kB/.exec(await readFile(`/proc/${this.proc.pid}/status`, 'utf8'));
    return { cpu, maxRssMiB: Number(hwm?.[1] ?? 0) / 1024 };
  }
  async stop(): Promise<void> {
    if (this.proc.exitCode !== null) return;
    await new Promise<void>((r) => { this.proc.once('exit', () => r()); this.proc.kill('SIGTERM'); });
  }
}

export interface CycleResult {
  wall: number; mbps: number; agentCpu: number; agentRssMiB: number; receiverCpu: number; receiverRssMiB: number;
  payloadBytes: number; wireBytes: number; changedBytes: number; readBytes: number;
}

export async function agentCycle(r: Receiver, device: string, stateDir: string, compression: number, capacity: number): Promise<CycleResult> {
  const codeFile = join(stateDir, '..', `code-${r.port}`);
  await writeFile(codeFile, r.code, { mode: 0o600 });
  const before = await r.usage();
  const u = await timed([...NODE, 'agent', 'sync', '--device', device, '--receiver', `127.0.0.1:${r.port}`, '--fingerprint', r.fingerprint,
    '--code-file', codeFile, '--state-dir', stateDir, '--source-id', 'bench', '--once', '--json', '--compression', String(compression)]);
  const after = await r.usage();
  const report = u.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.type === 'cycle')!;
  const disks = report.disks as { readBytes: number }[];
  return {
    wall: u.wall, mbps: capacity / 1e6 / u.wall, agentCpu: u.cpu, agentRssMiB: u.maxRssMiB,
    receiverCpu: after.cpu - before.cpu, receiverRssMiB: after.maxRssMiB,
    payloadBytes: Number(report.payloadBytes), wireBytes: Number(report.wireBytes), changedBytes: Number(report.changedBytes),
    readBytes: disks.reduce((n, d) => n + d.readBytes, 0),
  };
}

/**
 * Before a timed run: the previous run's dirty pages written back (`sync`; nbdcopy leaves its whole
 * output in the page cache, and its write-back slowed whatever ran next), and `path`
 * read into the page cache.
 */
export async function warm(path: string): Promise<void> {
  await execFileP('sync');
  await execFileP('sh', ['-c', `cat "${path}" > /dev/null`]);
}
