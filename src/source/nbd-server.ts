/**
 * NBD servers the connector starts itself, one per disk and cycle, the way virt-v2v and Forklift run
 * `nbdkit vddk`: a command template is run on a Unix socket in the connector's own folder
 * (`<home>/nbd/`), waited for until it listens, and read through vmlift's NBD client. The process is
 * reaped on every path: the source's close, a failed start, `closeAll` at shutdown, and — through the
 * pid file each server leaves beside its socket — `reapLeftoverNbdServers` at the next start after a
 * kill -9. Secrets reach the server as files (0600, removed with the server), never as arguments.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { closeSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BlockSource } from './types.ts';
import { wrapSource } from './wrap.ts';
import { NbdSource, type NbdSourceOptions } from './nbd/index.ts';
import { UserError, errorMessage } from '../util/errors.ts';
import { silentLogger, type Logger } from '../util/log.ts';

/** What a command template may name; `{passwordFile}` is a 0600 file holding the vCenter password. */
export const NBD_PLACEHOLDERS = ['socket', 'server', 'port', 'user', 'passwordFile', 'thumbprint', 'vm', 'snapshot', 'file', 'diskKey', 'transports', 'libdir'] as const;
export type NbdPlaceholder = (typeof NBD_PLACEHOLDERS)[number];

/**
 * nbdkit's vddk plugin, as virt-v2v and Forklift run it: read-only, on the connector's socket, exits
 * with the connector, the retry filter over VDDK's transient errors and the blocksize filter keeping
 * each VDDK read within NFC's 2 MiB. An argument whose placeholder has no value (libdir, port) is left out.
 */
export const DEFAULT_NBD_COMMAND: readonly string[] = [
  'nbdkit', '--unix', '{socket}', '--foreground', '--readonly', '--exit-with-parent',
  '--filter=retry', '--filter=blocksize', 'vddk',
  'libdir={libdir}', 'server={server}', 'port={port}', 'user={user}', 'password=+{passwordFile}', 'thumbprint={thumbprint}',
  'vm=moref={vm}', 'snapshot={snapshot}', 'file={file}', 'transports={transports}', 'maxdata=2M',
];

export interface NbdServerRequest {
  /** Names the socket, pid and secret files: `<job>-<disk key>`. */
  name: string;
  values: Partial<Record<Exclude<NbdPlaceholder, 'socket' | 'passwordFile'>, string>>;
  /** Written to `{passwordFile}` for the server's lifetime. */
  password?: string;
}

export interface NbdServersOptions {
  /** The connector's folder for sockets, pid files and secret files (`<home>/nbd`). */
  dir: string;
  /** The command template; DEFAULT_NBD_COMMAND when absent. */
  command?: readonly string[];
  /** How long a server may take to listen (default 30 s). */
  startTimeoutMs?: number;
  nbd?: NbdSourceOptions;
  logger?: Logger;
}

export type Availability = { ok: true; detail: string } | { ok: false; reason: string };

interface PidRecord { pid: number; start: string; socket: string; files: string[] }

/** A Unix socket path may hold 107 bytes (sun_path). */
const MAX_SOCKET_PATH = 107;

/** Checks a command template: an array of strings whose placeholders are all known. */
export function checkNbdCommand(command: unknown, where: string): string[] {
  if (!Array.isArray(command) || command.length === 0 || !command.every((a) => typeof a === 'string')) {
    throw new UserError('BAD_NBD_COMMAND', `${where} must be a non-empty array of strings`,
      'write it as ["nbdkit", "--unix", "{socket}", …] (see docs/transports.md)');
  }
  for (const a of command as string[]) {
    for (const m of a.matchAll(/\{([A-Za-z]+)\}/g)) {
      if (!(NBD_PLACEHOLDERS as readonly string[]).includes(m[1]!)) {
        throw new UserError('BAD_NBD_COMMAND', `${where} names an unknown placeholder {${m[1]}}`, `use only ${NBD_PLACEHOLDERS.map((p) => `{${p}}`).join(' ')}`);
      }
    }
  }
  if (!(command as string[]).some((a) => a.includes('{socket}'))) {
    throw new UserError('BAD_NBD_COMMAND', `${where} never names {socket}`, 'the server must listen on the Unix socket the connector names: put {socket} in the command');
  }
  return command as string[];
}

/** The command with its placeholders filled; an argument naming a placeholder without a value is dropped. */
export function expandNbdCommand(command: readonly string[], values: Partial<Record<NbdPlaceholder, string>>): string[] {
  const out: string[] = [];
  for (const a of command) {
    let missing = false;
    const v = a.replace(/\{([A-Za-z]+)\}/g, (_m, k: string) => {
      const x = values[k as NbdPlaceholder];
      if (x === undefined || x === '') missing = true;
      return x ?? '';
    });
    if (!missing) out.push(v);
  }
  return out;
}

/** Field 22 of /proc/<pid>/stat: when the process started, so a pid reused by another process is left alone. */
function startTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  // Each server leads its own process group (spawned detached), so a wrapper script's children go too.
  try { process.kill(-pid, sig); } catch { try { process.kill(pid, sig); } catch { /* gone */ } }
}

async function terminate(pid: number, exited: () => boolean): Promise<void> {
  signal(pid, 'SIGTERM');
  for (let i = 0; i < 100 && !exited(); i++) await new Promise((r) => setTimeout(r, 20));
  if (!exited()) {
    signal(pid, 'SIGKILL');
    for (let i = 0; i < 100 && !exited(); i++) await new Promise((r) => setTimeout(r, 20));
  }
}

function removeFiles(rec: Pick<PidRecord, 'socket' | 'files'>, pidFile: string): void {
  for (const f of [rec.socket, ...rec.files]) rmSync(f, { force: true });
  rmSync(pidFile, { force: true });
}

/**
 * Kills the NBD servers a previous connector process left running (after a kill -9) and removes their
 * sockets, pid and secret files. Returns the pids it killed.
 */
export async function reapLeftoverNbdServers(dir: string, log: Logger = silentLogger): Promise<number[]> {
  let names: string[];
  try { names = readdirSync(dir); } catch { return []; }
  const killed: number[] = [];
  for (const n of names.filter((x) => x.endsWith('.pid'))) {
    const pidFile = join(dir, n);
    let rec: PidRecord;
    try { rec = JSON.parse(readFileSync(pidFile, 'utf8')) as PidRecord; } catch { rmSync(pidFile, { force: true }); continue; }
    if (alive(rec.pid) && startTime(rec.pid) === rec.start) {
      await terminate(rec.pid, () => !alive(rec.pid) || startTime(rec.pid) === null || isZombie(rec.pid));
      killed.push(rec.pid);
    }
    removeFiles(rec, pidFile);
  }
  // Secret files whose pid file never got written (a crash in between) go too.
  for (const n of names.filter((x) => /\.(password|sock|log)$/.test(x))) {
    if (!names.includes(n.replace(/\.(password|sock|log)$/, '.pid'))) rmSync(join(dir, n), { force: true });
  }
  if (killed.length) log.warn({ pids: killed, dir }, 'killed NBD servers left running by an earlier connector process');
  return killed;
}

function isZombie(pid: number): boolean {
  try { return /\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return true; }
}

interface Running { child: ChildProcess; exited: boolean; pidFile: string; rec: PidRecord }

/** Starts NBD servers from one command template and hands out NbdSources over them. */
export class NbdServers {
  readonly dir: string;
  readonly command: readonly string[];
  private readonly o: NbdServersOptions;
  private readonly log: Logger;
  private readonly running = new Set<Running>();
  private checked: Promise<Availability> | undefined;

  constructor(o: NbdServersOptions) {
    this.o = o;
    this.dir = o.dir;
    this.command = o.command ? checkNbdCommand([...o.command], 'the NBD server command') : DEFAULT_NBD_COMMAND;
    this.log = o.logger ?? silentLogger;
  }

  get isDefaultCommand(): boolean { return this.command === DEFAULT_NBD_COMMAND; }

  /**
   * Whether a server can start here. A configured template is taken as the administrator's word; the
   * default needs nbdkit with its vddk plugin (Debian's nbdkit has none: VDDK is proprietary).
   */
  available(): Promise<Availability> {
    this.checked ??= this.isDefaultCommand ? probeVddkPlugin() : Promise.resolve({ ok: true, detail: `the configured NBD server command (${this.command[0]})` });
    return this.checked;
  }

  /** Pids of the servers running now. */
  pids(): number[] { return [...this.running].map((r) => r.child.pid!).filter(Boolean); }

  /** Starts a server for one disk, waits until it listens and returns an NbdSource whose close reaps it. */
  async open(req: NbdServerRequest): Promise<BlockSource> {
    const avail = await this.available();
    if (!avail.ok) {
      throw new UserError('NBD_NO_SERVER', `the connector cannot start an NBD server: ${avail.reason}`,
        'set your own server command in the connector config ("nbd": {"command": [...]}, see docs/transports.md), install an nbdkit that has the vddk plugin, or use --transport vddk');
    }
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    // A second server for the same disk in this process (an earlier attempt still closing) gets its own files.
    const base = req.name.replace(/[^A-Za-z0-9._-]/g, '_');
    let safe = base;
    for (let n = 2; [...this.running].some((r) => r.pidFile === join(this.dir, `${safe}.pid`)); n++) safe = `${base}.${n}`;
    const socket = join(this.dir, `${safe}.sock`);
    const pidFile = join(this.dir, `${safe}.pid`);
    if (socket.length > MAX_SOCKET_PATH) {
      throw new UserError('NBD_SOCKET_PATH', `the NBD socket path ${socket} is longer than a Unix socket allows (${MAX_SOCKET_PATH} bytes)`,
        'use a shorter connector home (--home) or shorter job ids');
    }
    await this.reapStale(pidFile);
    rmSync(socket, { force: true });
    const files: string[] = [];
    let passwordFile: string | undefined;
    if (req.password !== undefined) {
      passwordFile = join(this.dir, `${safe}.password`);
      rmSync(passwordFile, { force: true });
      writeFileSync(passwordFile, req.password, { mode: 0o600, flag: 'wx' });
      files.push(passwordFile);
    }
    const argv = expandNbdCommand(this.command, { ...req.values, socket, passwordFile });
    // The server's output goes to a file, not a pipe: a server outliving a kill -9'd connector must not die of SIGPIPE
    // before the next start reaps it, and the file tells why a server did not start.
    const logFile = join(this.dir, `${safe}.log`);
    files.push(logFile);
    const logFd = openSync(logFile, 'w', 0o600);
    let child: ChildProcess;
    try {
      child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', logFd, logFd], detached: true });
    } catch (e) {
      for (const f of files) rmSync(f, { force: true });
      throw new UserError('NBD_SERVER_START', `cannot run the NBD server command ${argv[0]}: ${errorMessage(e)}`, 'check the "nbd.command" of the connector config', { cause: e });
    } finally {
      closeSync(logFd);
    }
    const r: Running = { child, exited: false, pidFile, rec: { pid: child.pid ?? -1, start: '', socket, files } };
    let spawnError: Error | undefined;
    child.on('error', (e) => { spawnError = e; r.exited = true; });
    child.on('exit', () => { r.exited = true; });
    if (child.pid !== undefined) {
      r.rec.start = startTime(child.pid) ?? '';
      writeFileSync(pidFile, JSON.stringify(r.rec), { mode: 0o600 });
    }
    this.running.add(r);
    const reap = () => this.reap(r);
    try {
      await waitForSocket(socket, () => r.exited, this.o.startTimeoutMs ?? 30_000);
    } catch (e) {
      let stderr = '';
      try { stderr = readFileSync(logFile, 'utf8').slice(-4000); } catch { /* none */ }
      await reap();
      const why = spawnError ? errorMessage(spawnError) : (e as Error).message;
      throw new UserError('NBD_SERVER_START', `the NBD server for ${req.name} did not start: ${why}${stderr.trim() ? `; it said: ${stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`,
        this.isDefaultCommand ? 'install an nbdkit that has the vddk plugin, set "nbd.command" in the connector config, or use --transport vddk'
          : 'check the "nbd.command" of the connector config (run it by hand with the same arguments)');
    }
    this.log.info({ nbdServer: safe, pid: child.pid, socket, command: argv[0] }, 'NBD server started');
    let source: BlockSource;
    try {
      source = await NbdSource.open(`nbd+unix:///?socket=${encodeURIComponent(socket)}`, { ...this.o.nbd, logger: this.log });
    } catch (e) {
      await reap();
      throw e;
    }
    return wrapSource(source, { close: async () => { try { await source.close(); } finally { await reap(); } } });
  }

  /** Stops every server (connector shutdown). */
  async closeAll(): Promise<void> {
    await Promise.all([...this.running].map((r) => this.reap(r)));
  }

  private async reap(r: Running): Promise<void> {
    if (!this.running.delete(r)) return;
    if (r.child.pid !== undefined && !r.exited) await terminate(r.child.pid, () => r.exited);
    removeFiles(r.rec, r.pidFile);
    this.log.debug({ pid: r.child.pid, socket: r.rec.socket }, 'NBD server stopped');
  }

  /** A pid file of the same name from an earlier crash: its server goes before a new one takes the socket. */
  private async reapStale(pidFile: string): Promise<void> {
    let rec: PidRecord;
    try { rec = JSON.parse(readFileSync(pidFile, 'utf8')) as PidRecord; } catch { return; }
    if (alive(rec.pid) && startTime(rec.pid) === rec.start) await terminate(rec.pid, () => !alive(rec.pid) || isZombie(rec.pid));
    removeFiles(rec, pidFile);
  }
}

function waitForSocket(path: string, exited: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      if (exited()) return reject(new Error('it exited before listening'));
      if (Date.now() > deadline) return reject(new Error(`it did not listen on ${path} within ${Math.round(timeoutMs / 1000)} s`));
      const s = connect(path);
      s.once('connect', () => { s.destroy(); resolve(); });
      s.once('error', () => { s.destroy(); setTimeout(attempt, 25); });
    };
    attempt();
  });
}

/** Whether nbdkit is installed with its vddk plugin. */
function probeVddkPlugin(): Promise<Availability> {
  return new Promise((resolve) => {
    execFile('nbdkit', ['--dump-plugin', 'vddk'], { timeout: 10_000 }, (err, _stdout, stderr) => {
      if (!err) return resolve({ ok: true, detail: 'nbdkit with the vddk plugin' });
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return resolve({ ok: false, reason: 'nbdkit is not installed' });
      const said = String(stderr).trim().split('\n').pop() ?? '';
      resolve({ ok: false, reason: `nbdkit has no usable vddk plugin (Debian's nbdkit is built without it)${said ? `: ${said}` : ''}` });
    });
  });
}

