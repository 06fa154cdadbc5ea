/**
 * A real `vmlift receiver serve` child for the fuzzer: its pid (the node process: bin/vmlift execs),
 * its memory from /proc, its error log lines, whether it is still alive.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { VMLIFT, freePorts, killWait } from '../../agent/harness.ts';

export interface ReceiverFacts { controlPort: number; dataPort: number; fingerprint: string; activationCode: { code: string } | null }

export class FuzzedReceiver {
  readonly errorLines: string[] = [];
  exit: { code: number | null; signal: string | null } | null = null;
  peakRssKiB = 0;
  /** The longest store flush a data connection logged (with VMLIFT_FUZZ_LOG_LEVEL=debug). */
  slowestFlushMs = 0;
  private sampler: NodeJS.Timeout | null = null;
  stderrTail = '';
  private constructor(readonly proc: ChildProcess, readonly facts: ReceiverFacts, readonly fingerprint: string) {}

  /** `cwd`: the folder it runs in (checked to stay empty). */
  static async start(dataDir: string, cwd: string): Promise<FuzzedReceiver> {
    const [controlPort, dataPort] = await freePorts(2);
    const proc = spawn(VMLIFT, ['receiver', 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1', '--control-port', String(controlPort),
      '--data-port', String(dataPort), '--json'], { cwd, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMLIFT_LOG_LEVEL: process.env.VMLIFT_FUZZ_LOG_LEVEL ?? 'error' } });
    let err = '';
    const onErr = (d: Buffer): void => { err += String(d); if (err.length > 1 << 16) err = err.slice(-(1 << 15)); };
    proc.stderr!.on('data', onErr);
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: proc.stdout! }).once('line', resolve);
      proc.once('exit', (c) => reject(new Error(`receiver exited ${c} before listening: ${err}`)));
    });
    const facts = JSON.parse(line) as ReceiverFacts;
    const rx = new FuzzedReceiver(proc, facts, facts.fingerprint.replace(/:/g, '').toLowerCase());
    proc.stderr!.off('data', onErr);
    rx.stderrTail = err;
    // error-level lines are the receiver's own failures (INTERNAL), never a refusal of what a peer sent
    createInterface({ input: proc.stderr! }).on('line', (l) => {
      rx.stderrTail = (rx.stderrTail + l + '\n').slice(-(1 << 15));
      let j: { level?: number; msg?: string; ms?: number } = {};
      try { j = JSON.parse(l) as typeof j; } catch { /* not a log line: kept as an error */ }
      if (j.msg === 'store flushed' && typeof j.ms === 'number') rx.slowestFlushMs = Math.max(rx.slowestFlushMs, j.ms);
      if ((j.level ?? 60) >= 50 && rx.errorLines.length < 200) rx.errorLines.push(l.slice(0, 2000));
    });
    const killOnExit = (): void => { proc.kill('SIGKILL'); };
    process.once('exit', killOnExit); // a fuzzer that dies leaves no receiver behind
    proc.once('exit', (code, signal) => { rx.exit = { code, signal }; process.off('exit', killOnExit); });
    rx.sampler = setInterval(() => rx.sample(), 100);
    rx.sampler.unref();
    return rx;
  }

  get pid(): number { return this.proc.pid!; }
  get alive(): boolean { return this.exit === null; }

  /** VmRSS and VmHWM in KiB (0 once it exited). */
  memory(): { rssKiB: number; hwmKiB: number } {
    try {
      const s = readFileSync(`/proc/${this.pid}/status`, 'utf8');
      return { rssKiB: Number(/VmRSS:\s+(\d+)/.exec(s)?.[1] ?? 0), hwmKiB: Number(/VmHWM:\s+(\d+)/.exec(s)?.[1] ?? 0) };
    } catch { return { rssKiB: 0, hwmKiB: 0 }; }
  }

  sample(): void {
    const m = this.memory();
    this.peakRssKiB = Math.max(this.peakRssKiB, m.rssKiB, m.hwmKiB);
  }

  async stop(): Promise<void> {
    if (this.sampler) clearInterval(this.sampler);
    this.sample();
    await killWait(this.proc, 'SIGTERM');
  }
}
