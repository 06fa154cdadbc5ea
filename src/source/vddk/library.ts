/**
 * libvixDiskLib as one process uses it: InitEx once (library folder and VDDK config file), one log
 * sink and one completion callback for every disk, connections shared by the disks of one VM at one
 * snapshot (ConnectEx per VM and snapshot, Disconnect when its last disk closes), and Exit when the
 * process ends, after closing what is still open and idle.
 */
import { createHash } from 'node:crypto';
import { UserError } from '../../util/errors.ts';
import { silentLogger, type Logger } from '../../util/log.ts';
import { errorText, loadVixDiskLib, VIX_OK, VIXDISKLIB_CRED_SESSIONID, VIXDISKLIB_CRED_UID, koffi, type VixLib } from './abi.ts';

export type VddkCredentials = { user: string; password: string } | { cookie: string; user?: string };

export interface VddkInitOptions {
  /** VDDK folder (the one holding lib64/); default VMLIFT_VDDK_LIBDIR. */
  libdir?: string | undefined;
  /**
   * VDDK configuration file handed to InitEx, e.g. NFC AIO buffers
   * (vixDiskLib.nfcAio.Session.BufSizeIn64KB=16, vixDiskLib.nfcAio.Session.BufCount=4).
   */
  configFile?: string | undefined;
  logger?: Logger | undefined;
}

let vix: VixLib | undefined;
let initialized: { libdir: string | undefined; configFile: string | undefined } | undefined;
let logSink: Logger = silentLogger;
let lastNfc: string | undefined;
const completions = new Map<number, (result: number) => void>();
let nextCbId = 1;
let completionCb: unknown;
let callbacks: unknown[] | undefined;
const fmtBuf = Buffer.alloc(8192);
let exitHook = false;

/** Closers of the disks open now, run (when idle) before Exit at process end. */
const openDisks = new Set<{ closeSync: () => void; idle: () => boolean }>();

function formatVddk(fmt: string, args: unknown): string {
  // VDDK passes printf-style (fmt, va_list). Only C can walk a va_list, so libc's vsnprintf does it.
  if (vix?.vsnprintf && args) {
    const n = vix.vsnprintf(fmtBuf, fmtBuf.length, fmt, args);
    if (n >= 0) return fmtBuf.toString('utf8', 0, Math.min(n, fmtBuf.length - 1)).trimEnd();
  }
  return fmt.trimEnd();
}

/**
 * VixDiskLib_InitEx, once per process. A later call with the same folder and config file returns the
 * same library; another config file is refused while disks are open (VDDK reads it only at InitEx)
 * and otherwise re-initializes the library.
 */
export function initVddk(o: VddkInitOptions = {}): VixLib {
  const libdir = o.libdir ?? process.env.VMLIFT_VDDK_LIBDIR;
  const lib = loadVixDiskLib(libdir);
  if (vix && vix !== lib) throw new UserError('VDDK_TWO_LIBS', `VDDK already loaded from ${vix.file}; cannot also use ${lib.file} in one process`, 'use one --vddk-libdir per process');
  vix = lib;
  if (o.logger) logSink = o.logger;
  if (initialized) {
    if (initialized.configFile === o.configFile) return lib;
    if (openDisks.size > 0) {
      throw new UserError('VDDK_CONFIG_CONFLICT', `VDDK was initialized with config file ${initialized.configFile ?? '(none)'} and has ${openDisks.size} disk(s) open; it cannot switch to ${o.configFile ?? '(none)'}`,
        'give every VDDK disk of one process the same VDDK config file');
    }
    shutdownVddk();
  }
  if (!callbacks) {
    const sink = (level: 'debug' | 'warn' | 'error') => lib.registerLog((fmt: string, args: unknown) => {
      try {
        const line = formatVddk(fmt, args);
        if (line.includes('NFC ERROR')) lastNfc = line.replace(/^\[NFC ERROR\]\s*/, '');
        logSink[level]({ vddk: true }, line);
      } catch { /* never throw into C */ }
    });
    completionCb = lib.registerCompletion((id: number | bigint, result: number | bigint) => {
      const f = completions.get(Number(id));
      completions.delete(Number(id));
      f?.(Number(result));
    });
    callbacks = [sink('debug'), sink('warn'), sink('error')];
  }
  // VDDK 7/8 accept API version 7.0 in InitEx; the double checks the major only.
  const err = Number(lib.InitEx(7, 0, callbacks[0], callbacks[1], callbacks[2], libdir ?? null, o.configFile ?? null));
  if (err !== VIX_OK) throw new UserError('VDDK_INIT', `VixDiskLib_InitEx failed: ${errorText(lib, err)} (VIX error ${err})`, 'check the VDDK installation and its configuration file');
  initialized = { libdir, configFile: o.configFile };
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => shutdownVddk());
  }
  return lib;
}

/**
 * Closes the disks still open whose reads are done, disconnects, and calls VixDiskLib_Exit; a later
 * open initializes again. Runs by itself when the process exits.
 */
export function shutdownVddk(): void {
  for (const d of [...openDisks]) if (d.idle()) d.closeSync();
  if (vix && initialized) vix.Exit();
  initialized = undefined;
}

export function registerOpenDisk(d: { closeSync: () => void; idle: () => boolean }): () => void {
  openDisks.add(d);
  return () => { openDisks.delete(d); };
}

/** The last "[NFC ERROR] ..." line VDDK logged (its text names the host's failure). */
export function lastNfcError(): string | undefined { return lastNfc; }

// VDDK's completion callbacks come from its own threads, which do not keep Node's event loop alive:
// while any read is in flight a timer does.
let inFlight = 0;
let keepAliveTimer: NodeJS.Timeout | undefined;

/** Registers a completion for one ReadAsync: the id to pass as cbData, and the callback pointer. */
export function completion(fn: (result: number) => void): { id: number; cb: unknown } {
  const id = nextCbId++;
  if (nextCbId > 0x7fffffff) nextCbId = 1;
  if (inFlight++ === 0) keepAliveTimer = setInterval(() => undefined, 1 << 30);
  completions.set(id, (result) => {
    if (--inFlight === 0) { clearInterval(keepAliveTimer); keepAliveTimer = undefined; }
    fn(result);
  });
  return { id, cb: completionCb };
}

export function dropCompletion(id: number): ((result: number) => void) | undefined {
  const f = completions.get(id);
  completions.delete(id);
  return f;
}

// ---- connections: one per VM and snapshot (and server, credentials, transports) ----

export interface ConnectSpec {
  server?: string | undefined;
  port?: number | undefined;
  nfcHostPort?: number | undefined;
  thumbprint?: string | undefined;
  credentials?: VddkCredentials | undefined;
  vm?: string | undefined;
  snapshot?: string | undefined;
  transports?: string | undefined;
}

interface SharedConn { conn: unknown; refs: number }
const conns = new Map<string, SharedConn>();

function connKey(s: ConnectSpec): string {
  const c = s.credentials;
  const who = !c ? '' : 'password' in c ? `uid:${c.user}:${digest(c.password)}` : `sid:${c.user ?? ''}:${digest(c.cookie)}`;
  return JSON.stringify([s.server ?? '', s.port ?? 0, s.nfcHostPort ?? 0, s.thumbprint ?? '', who, s.vm ?? '', s.snapshot ?? '', s.transports ?? '']);
}
const digest = (secret: string): string => createHash('sha256').update(secret).digest('hex').slice(0, 16);

/** Connections and disks vmlift holds open in this process (what tests assert is zero after errors). */
export function vddkOpenCounts(): { connections: number; disks: number } {
  return { connections: conns.size, disks: openDisks.size };
}

/**
 * The connection for this VM and snapshot: ConnectEx (read-only) the first time, shared afterwards.
 * Returns the connection and its release (Disconnect after the last release), or the VIX error.
 */
export function connect(lib: VixLib, s: ConnectSpec): { conn: unknown; release: () => void } | { err: number } {
  const key = connKey(s);
  let shared = conns.get(key);
  if (!shared) {
    const out: unknown[] = [null];
    const err = Number(lib.ConnectEx(connectParams(s), 1, s.snapshot ?? null, s.server ? (s.transports ?? null) : null, out));
    if (err !== VIX_OK) return { err };
    shared = { conn: out[0], refs: 0 };
    conns.set(key, shared);
  }
  shared.refs++;
  const mine = shared;
  let released = false;
  return {
    conn: mine.conn,
    release: () => {
      if (released) return;
      released = true;
      if (--mine.refs > 0) return;
      conns.delete(key);
      lib.Disconnect(mine.conn);
    },
  };
}

function connectParams(o: ConnectSpec): unknown {
  const creds = new koffi.Union('VixDiskLibCreds');
  let credType = 0;
  if (o.credentials && 'password' in o.credentials) {
    credType = VIXDISKLIB_CRED_UID;
    (creds as Record<string, unknown>).uid = { userName: o.credentials.user, password: o.credentials.password };
  } else if (o.credentials && 'cookie' in o.credentials) {
    credType = VIXDISKLIB_CRED_SESSIONID;
    (creds as Record<string, unknown>).sessionId = { cookie: o.credentials.cookie, userName: o.credentials.user ?? null, key: null };
  } else {
    (creds as Record<string, unknown>).ticketId = null;
  }
  const spec = new koffi.Union('VixDiskLibSpec');
  (spec as Record<string, unknown>).vStorageObjSpec = { id: null, datastoreMoRef: null, ssId: null };
  return {
    vmxSpec: o.vm ? `moref=${o.vm}` : null,
    serverName: o.server ?? null,
    thumbPrint: o.thumbprint ?? null,
    privateUse: 0,
    credType,
    creds,
    port: o.port ?? 0,
    nfcHostPort: o.nfcHostPort ?? 0,
    reserved3: null,
    reserved4: [0, 0, 0, 0, 0, 0, 0, 0],
    reserved5: null,
    spec,
    specType: 0,
  };
}
