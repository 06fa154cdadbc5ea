/**
 * A read-only libguestfs session over disk files, driven one command at a time through
 * guestfish's remote mode, so each command's output and failure stay apart.
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CodedError } from '../util/errors.ts';
import { onAbort } from './abort.ts';

const run = promisify(execFile);

/** libguestfs without libvirt, and on TCG unless told otherwise: nested KVM hangs the appliance on these machines. */
export function guestfsEnv(): NodeJS.ProcessEnv {
  return { ...process.env, LIBGUESTFS_BACKEND: process.env.LIBGUESTFS_BACKEND ?? 'direct',
    LIBGUESTFS_BACKEND_SETTINGS: process.env.LIBGUESTFS_BACKEND_SETTINGS ?? 'force_tcg' };
}

export interface GuestfsOptions {
  /** Disk image format (default raw). */
  format?: 'raw' | 'qcow2';
  /** Open the disks for writing (default read-only). */
  write?: boolean;
  /** Environment of guestfish and its appliance (default guestfsEnv()). */
  env?: NodeJS.ProcessEnv;
  /** The appliance's memory in MiB (LIBGUESTFS_MEMSIZE; default libguestfs' own, 1280 MiB on x86-64). */
  memoryMiB?: number | undefined;
  /** Aborting ends guestfish and its appliance at once; the command under way and every later one reject. */
  signal?: AbortSignal | undefined;
}

/** The error to throw once `signal` aborted: its reason when that is an Error. */
export function abortError(signal: AbortSignal): Error {
  const r: unknown = signal.reason;
  return r instanceof Error ? r : new CodedError('ABORTED', `stopped: ${String(r)}`);
}

/** Pids whose command line mentions one of `needles`. */
export function pidsMentioning(needles: string[]): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    let cmd = '';
    try { cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8'); } catch { continue; }
    if (needles.some((n) => cmd.includes(n))) out.push(Number(p));
  }
  return out;
}

export class Guestfs {
  private closed = false;
  private readonly unregister: () => void;
  private offSignal: () => void = () => {};
  private killed = false;
  /** `tmp`: the session's own TMPDIR (libguestfs' handle folder and overlays), removed with the session. */
  private constructor(readonly pid: number, private readonly env: NodeJS.ProcessEnv, private readonly tmp: string) {
    // The --listen daemon outlives this process unless killed; its recovery process then ends the appliance.
    this.unregister = onAbort(() => {
      try { execFileSync('guestfish', [`--remote=${pid}`, '--', 'exit'], { env, timeout: 5000, stdio: 'ignore' }); } catch { /* kill below */ }
      this.kill();
      rmSync(tmp, { recursive: true, force: true });
    });
  }

  /** SIGKILLs guestfish and every process of the session (its appliance names the session's folder). */
  kill(): void {
    this.killed = true;
    try { process.kill(this.pid, 'SIGKILL'); } catch { /* gone */ }
    for (const p of pidsMentioning([this.tmp])) { try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } }
  }

  /** Starts the appliance over `disks` (raw files unless told), read-only unless told. */
  static async open(disks: string[], o: GuestfsOptions = {}): Promise<Guestfs> {
    const base = o.env ?? guestfsEnv();
    const parent = base.TMPDIR ?? tmpdir();
    const own = mkdtempSync(join(parent, 'guestfs-'));
    // The appliance cache stays where it was (shared, built once); the handle's files go in `own`.
    const env: NodeJS.ProcessEnv = { ...base, TMPDIR: own, LIBGUESTFS_CACHEDIR: base.LIBGUESTFS_CACHEDIR ?? parent,
      ...(o.memoryMiB ? { LIBGUESTFS_MEMSIZE: String(o.memoryMiB) } : {}) };
    try {
      if (o.signal?.aborted) throw abortError(o.signal);
      return await Guestfs.start(disks, o, env, own);
    } catch (e) {
      rmSync(own, { recursive: true, force: true });
      if (o.signal?.aborted) throw abortError(o.signal);
      throw e;
    }
  }

  private static async start(disks: string[], o: GuestfsOptions, env: NodeJS.ProcessEnv, own: string): Promise<Guestfs> {
    const args = ['--listen', o.write ? '--rw' : '--ro'];
    for (const d of disks) args.push(`--format=${o.format ?? 'raw'}`, '-a', d);
    let out: string;
    try {
      out = await new Promise<string>((resolve, reject) => {
        const p = spawn('guestfish', args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
        let o = '', e = '';
        p.stdout.on('data', (b) => { o += b; });
        p.stderr.on('data', (b) => { e += b; });
        p.on('error', reject);
        p.on('exit', (code) => (code === 0 ? resolve(o) : reject(new Error(e.trim() || `guestfish exited ${code}`))));
      });
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new CodedError('GUESTFS_MISSING', err.code === 'ENOENT' ? 'guestfish (libguestfs) is not installed' : `guestfish did not start: ${err.message}`,
        { fix: 'install libguestfs-tools and linux-image-amd64 (scripts/setup.sh), then check `LIBGUESTFS_BACKEND_SETTINGS=force_tcg libguestfs-test-tool`' });
    }
    const m = /GUESTFISH_PID=(\d+)/.exec(out);
    if (!m) throw new CodedError('GUESTFS_FAILED', `guestfish --listen printed no pid: ${out.slice(0, 200)}`);
    const g = new Guestfs(Number(m[1]), env, own);
    try {
      await waitForListenSocket(listenSocketPath(g.pid), g.pid, LISTEN_SOCKET_WAIT_MS);
    } catch (e) {
      await g.close();
      throw new CodedError('GUESTFS_FAILED', (e as Error).message, { fix: 'run `LIBGUESTFS_BACKEND_SETTINGS=force_tcg libguestfs-test-tool` to see why', cause: e });
    }
    if (o.signal) {
      const signal = o.signal;
      const onAbortSignal = () => g.kill();
      if (signal.aborted) g.kill(); else signal.addEventListener('abort', onAbortSignal, { once: true });
      g.offSignal = () => signal.removeEventListener('abort', onAbortSignal);
    }
    try {
      await g.cmd('run');
    } catch (e) {
      await g.close();
      throw new CodedError('GUESTFS_FAILED', `the libguestfs appliance did not start: ${(e as Error).message}`,
        { fix: 'run `LIBGUESTFS_BACKEND_SETTINGS=force_tcg libguestfs-test-tool` to see why', cause: e });
    }
    return g;
  }

  /**
   * Runs one guestfish command; rejects with its error message. A failing command ends the --listen
   * server (guestfish exits on the first error): use it for what must succeed.
   */
  async cmd(...args: string[]): Promise<string> {
    if (this.killed) throw new Error('the libguestfs session was stopped');
    try {
      const { stdout } = await run('guestfish', [`--remote=${this.pid}`, '--', ...args], { env: this.env, maxBuffer: 64 << 20 });
      return stdout;
    } catch (e) {
      const err = e as { stderr?: string; message: string };
      throw new Error((err.stderr ?? '').trim().replace(/^libguestfs: error: /, '') || err.message);
    }
  }

  /**
   * The command's output, or null when it printed nothing (it failed, or had nothing to say). It goes
   * with guestfish's "-" prefix, which keeps the server running when the command fails (the error
   * then shows on the server's stderr only, so failure and empty output look alike here).
   */
  async tryCmd(...args: string[]): Promise<string | null> {
    const [name, ...rest] = args;
    const out = await this.cmd(`-${name}`, ...rest).catch(() => null);
    return out ? out : null;
  }

  async lines(...args: string[]): Promise<string[]> {
    return ((await this.tryCmd(...args)) ?? '').split('\n').filter((l) => l.length > 0);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.cmd('exit').catch(() => {});
    for (let i = 0; i < 50 && alive(this.pid); i++) await new Promise((r) => setTimeout(r, 100));
    if (alive(this.pid)) { try { process.kill(this.pid, 'SIGKILL'); } catch { /* gone */ } }
    for (let i = 0; i < 50 && pidsMentioning([this.tmp]).length; i++) await new Promise((r) => setTimeout(r, 100));
    await rm(this.tmp, { recursive: true, force: true });
    this.offSignal();
    this.unregister();
  }
}

/** Where `guestfish --listen` (libguestfs 1.48) puts the socket of server PID: a fixed folder per user, not TMPDIR. */
export function listenSocketPath(pid: number): string {
  return `/tmp/.guestfish-${process.geteuid?.() ?? 0}/socket-${pid}`;
}

const LISTEN_SOCKET_WAIT_MS = 30_000;

/**
 * Waits until the socket at PATH exists. guestfish --listen prints the server's pid before that
 * child has bound its socket (libguestfs documents the race), so on a loaded machine the first
 * `--remote` can find no socket and fail with "looks like the server is not running".
 */
export async function waitForListenSocket(path: string, pid: number, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (listeningOn(path)) return;
    if (!alive(pid) || zombie(pid)) throw new Error(`guestfish --listen (pid ${pid}) exited before it made its socket ${path}`);
    if (Date.now() >= until) throw new Error(`guestfish --listen (pid ${pid}) made no socket ${path} within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Whether a socket is listening at PATH, from the kernel's table (flag __SO_ACCEPTCON): a stale
 * socket file left by a killed server whose pid was reused would pass a file check.
 */
function listeningOn(path: string): boolean {
  let table = '';
  try { table = readFileSync('/proc/net/unix', 'utf8'); } catch { return false; }
  return table.split('\n').some((l) => l.endsWith(` ${path}`) && (parseInt(l.trim().split(/\s+/)[3] ?? '0', 16) & 0x10000) !== 0);
}

function zombie(pid: number): boolean {
  try { return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return false; }
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}
