/**
 * The VDDK reader: a BlockSource over libvixDiskLib through koffi (abi.ts declares the ABI): process-
 * wide init, ConnectEx + Open of a disk at a snapshot with the job's transport modes, sector-aligned
 * reads (ReadAsync with a completion queue, or Read), allocated-block queries, per-host open slots,
 * and VDDK error codes turned into VddkError with a fix.
 */
import type { BlockSource, SourceExtent } from '../types.ts';
import { CodedError, UserError } from '../../util/errors.ts';
import { silentLogger, type Logger } from '../../util/log.ts';
import { retryingSource, type RetryPolicy } from '../retry.ts';
import { PositionalReader } from '../positional.ts';
import {
  ConnectParamsType, decodeBlockList, errorText, koffi, loadVixDiskLib, MAX_CHUNK_NUMBER, MIN_CHUNK_SECTORS, SECTOR,
  VIX_ASYNC, VIX_E_DISK_OUTOFRANGE, VIX_E_NOT_SUPPORTED, VIX_E_FILE_NOT_FOUND, VIX_E_HOST_USER_PERMISSIONS, VIX_E_OBJECT_IS_BUSY, VIX_OK,
  VIXDISKLIB_CRED_SESSIONID, VIXDISKLIB_CRED_UID, VIXDISKLIB_FLAG_OPEN_READ_ONLY, type VixLib,
} from './abi.ts';
import { Semaphore } from '../../util/semaphore.ts';

export type VddkCredentials = { user: string; password: string } | { cookie: string; user?: string };

export interface VddkSourceOptions {
  /** VDDK folder (the one holding lib64/); default VMLIFT_VDDK_LIBDIR. */
  libdir?: string;
  /** VDDK configuration file passed to InitEx. */
  configFile?: string;
  /** vCenter or ESXi host; omit to open a local disk file. */
  server?: string;
  port?: number;
  nfcHostPort?: number;
  /** Server certificate thumbprint, as VDDK expects it ("AA:BB:..."). */
  thumbprint?: string;
  credentials?: VddkCredentials;
  /** VM managed object id ("vm-42"); sent as vmxSpec "moref=vm-42". */
  vm?: string;
  /** Snapshot managed object id ("snapshot-7") whose disk state is read. */
  snapshot?: string;
  /** "[datastore1] vm/vm.vmdk" (remote) or a file path (local). */
  diskPath: string;
  /** VDDK transport modes in order of preference, e.g. "nbdssl:nbd", "hotadd", "san". */
  transports?: string;
  /** Largest read handed to VDDK; NFC through vCenter copes badly with more than 2 MiB (default). */
  maxReadSize?: number;
  /** Reads submitted together with ReadAsync before a Wait (default 8). */
  maxInFlight?: number;
  /** 'async': ReadAsync + Wait (default); 'sync': VixDiskLib_Read on a worker thread, one at a time. */
  mode?: 'async' | 'sync';
  /** ESXi host the disk lives on, for the open-disks limit (default: server). */
  esxiHost?: string;
  /** Disks open at once per ESXi host across this process (default 8). */
  maxOpenDisksPerHost?: number;
  retry?: RetryPolicy;
  logger?: Logger;
}

/** A failed VixDiskLib call on an open disk; transient when the handle was only busy. */
export class VddkError extends CodedError {
  readonly vixCode: number;
  constructor(call: string, code: number, text: string) {
    super('VDDK_ERROR', `${call} failed: ${text} (VIX error ${code})`, {
      transient: code === VIX_E_OBJECT_IS_BUSY,
      fix: 'check the ESXi host of the disk, the network path to it (NFC port 902) and the VDDK lines of the log',
    });
    this.vixCode = code;
  }
}

// ---- process-wide VDDK state: InitEx once, one log sink, one completion callback ----

let vix: VixLib | undefined;
let initialized = false;
let logSink: Logger = silentLogger;
const completions = new Map<number, (result: number) => void>();
let nextCbId = 1;
let completionCb: unknown;
const fmtBuf = Buffer.alloc(8192);
const keepAlive: unknown[] = [];

function formatVddk(fmt: string, args: unknown): string {
  // VDDK passes printf-style (fmt, va_list). Only C can walk a va_list, so libc's vsnprintf does it.
  if (vix?.vsnprintf && args) {
    const n = vix.vsnprintf(fmtBuf, fmtBuf.length, fmt, args);
    if (n >= 0) return fmtBuf.toString('utf8', 0, Math.min(n, fmtBuf.length - 1)).trimEnd();
  }
  return fmt.trimEnd();
}

function ensureInit(libdir: string | undefined, configFile: string | undefined, log: Logger): VixLib {
  const lib = loadVixDiskLib(libdir ?? process.env.VMLIFT_VDDK_LIBDIR);
  if (vix && vix !== lib) throw new UserError('VDDK_TWO_LIBS', `VDDK already loaded from ${vix.file}; cannot also use ${lib.file} in one process`, 'use one --vddk-libdir per process');
  vix = lib;
  logSink = log;
  if (initialized) return lib;
  const sink = (level: 'debug' | 'warn' | 'error') => lib.registerLog((fmt: string, args: unknown) => {
    try { logSink[level]({ vddk: true }, formatVddk(fmt, args)); } catch { /* never throw into C */ }
  });
  const cbs = [sink('debug'), sink('warn'), sink('error')];
  completionCb = lib.registerCompletion((id: number | bigint, result: number | bigint) => {
    const f = completions.get(Number(id));
    completions.delete(Number(id));
    f?.(Number(result));
  });
  keepAlive.push(...cbs, completionCb);
  // VDDK 7/8 accept API version 7.0 in InitEx; the double checks the major only.
  const err = Number(lib.InitEx(7, 0, cbs[0], cbs[1], cbs[2], libdir ?? process.env.VMLIFT_VDDK_LIBDIR ?? null, configFile ?? null));
  if (err !== VIX_OK) throw new UserError('VDDK_INIT', `VixDiskLib_InitEx failed: ${errorText(lib, err)} (VIX error ${err})`, 'check the VDDK installation and its configuration file');
  initialized = true;
  return lib;
}

/** Calls VixDiskLib_Exit; a later open initializes again. */
export function shutdownVddk(): void {
  if (vix && initialized) vix.Exit();
  initialized = false;
}

// ---- open disks per ESXi host ----

/** Disks open per ESXi host in this process (VMware's NFC connection limits); the first open for a host sets its limit. */
const hostSlots = new Map<string, Semaphore>();

function acquireHost(host: string, limit: number): Promise<() => void> {
  let s = hostSlots.get(host);
  if (!s) hostSlots.set(host, s = new Semaphore(limit));
  return s.acquire();
}

interface Req { startSector: number; sectors: number; native: unknown; into: Buffer | undefined; resolve: (b: Buffer) => void; reject: (e: Error) => void }

/**
 * A BlockSource over libvixDiskLib: a disk of a VM (at a snapshot) through vCenter/ESXi, or a local VMDK.
 * `open` returns it under the retry wrapper; its own reads and queries try once and throw VddkError.
 */
export class VddkSource extends PositionalReader implements BlockSource {
  readonly transport = 'vddk';
  readonly uri: string;
  readonly capacity: number;
  readonly maxReadSize: number;
  readonly maxInFlight: number;
  /** The transport VDDK picked (nbdssl, nbd, hotadd, san, file). */
  readonly transportMode: string;
  private readonly lib: VixLib;
  private conn: unknown;
  private handle: unknown;
  private readonly release: () => void;
  private readonly mode: 'async' | 'sync';
  private readonly log: Logger;
  private queue: Req[] = [];
  private pump: Promise<void> | undefined;
  private syncChain: Promise<unknown> = Promise.resolve();
  private readonly pool: unknown[] = [];
  private closed = false;

  private constructor(lib: VixLib, conn: unknown, handle: unknown, capacity: number, release: () => void, uri: string, opts: VddkSourceOptions) {
    super();
    this.lib = lib;
    this.conn = conn;
    this.handle = handle;
    this.capacity = capacity;
    this.release = release;
    this.uri = uri;
    this.transportMode = lib.GetTransportMode(handle);
    const max = opts.maxReadSize ?? (opts.server ? 2 << 20 : 8 << 20);
    this.maxReadSize = Math.max(SECTOR, Math.floor(max / SECTOR) * SECTOR);
    this.mode = opts.mode ?? 'async';
    this.maxInFlight = this.mode === 'sync' ? 1 : Math.max(1, opts.maxInFlight ?? 8);
    this.log = opts.logger ?? silentLogger;
  }

  static async open(opts: VddkSourceOptions): Promise<VddkSource> {
    const log = opts.logger ?? silentLogger;
    const lib = ensureInit(opts.libdir, opts.configFile, log);
    const uri = displayUri(opts);
    const release = await acquireHost(opts.esxiHost ?? opts.server ?? 'localhost', opts.maxOpenDisksPerHost ?? 8);
    let conn: unknown;
    try {
      const params = connectParams(opts);
      const out: unknown[] = [null];
      let err = Number(lib.ConnectEx(params, 1, opts.snapshot ?? null, opts.transports ?? null, out));
      if (err !== VIX_OK) throw openError(lib, 'VixDiskLib_ConnectEx', err, opts, uri);
      conn = out[0];
      const h: unknown[] = [null];
      err = Number(lib.Open(conn, opts.diskPath, VIXDISKLIB_FLAG_OPEN_READ_ONLY, h));
      if (err !== VIX_OK) throw openError(lib, 'VixDiskLib_Open', err, opts, uri);
      const ip: unknown[] = [null];
      err = Number(lib.GetInfo(h[0], ip));
      if (err !== VIX_OK) {
        lib.Close(h[0]);
        throw openError(lib, 'VixDiskLib_GetInfo', err, opts, uri);
      }
      const info = lib.decodeInfo(ip[0]);
      lib.FreeInfo(ip[0]);
      const src = new VddkSource(lib, conn, h[0], Number(info.capacity) * SECTOR, release, uri, opts);
      log.info({ uri, transport: src.transportMode, capacity: src.capacity, adapterType: info.adapterType }, 'vddk disk opened');
      return retryingSource(src, opts.retry, log);
    } catch (e) {
      if (conn) lib.Disconnect(conn);
      release();
      throw e;
    }
  }

  protected async readAt(offset: number, length: number, target: Buffer | undefined): Promise<Buffer> {
    if (length === 0) return Buffer.alloc(0);
    return this.readAligned(offset, length, target, SECTOR, (start, n, into) =>
      this.mode === 'sync' ? this.readSync(start / SECTOR, n / SECTOR, into) : this.readAsync(start / SECTOR, n / SECTOR, into));
  }

  /** Allocated areas from VixDiskLib_QueryAllocatedBlocks (VDDK >= 6.7); all data when the library lacks it. */
  async *extents(offset = 0, length = this.capacity - offset): AsyncIterable<SourceExtent> {
    const end = offset + length;
    if (offset < 0 || length < 0 || end > this.capacity) throw new RangeError(`extents of [${offset}, ${end}) are outside ${this.uri} (capacity ${this.capacity})`);
    const q = this.lib.QueryAllocatedBlocks;
    const free = this.lib.FreeBlockList;
    if (!q || !free || length <= 0) {
      if (length > 0) yield { offset, length, data: true };
      return;
    }
    const chunk = MIN_CHUNK_SECTORS;
    const chunkBytes = chunk * SECTOR;
    const alignedEnd = Math.floor(this.capacity / chunkBytes) * chunkBytes;
    let run: SourceExtent | undefined;
    const emit = function* (o: number, l: number, data: boolean): Generator<SourceExtent> {
      const s = Math.max(o, offset);
      const e = Math.min(o + l, end);
      if (e <= s) return;
      if (run && run.data === data && run.offset + run.length === s) { run.length += e - s; return; }
      if (run) yield run;
      run = { offset: s, length: e - s, data };
    };
    let pos = Math.floor(offset / chunkBytes) * chunkBytes;
    const window = chunkBytes * Math.min(MAX_CHUNK_NUMBER, 65536);
    while (pos < Math.min(end, alignedEnd)) {
      const wEnd = Math.min(pos + window, alignedEnd, Math.ceil(end / chunkBytes) * chunkBytes);
      const out: unknown[] = [null];
      const err = Number(q(this.handle, pos / SECTOR, (wEnd - pos) / SECTOR, chunk, out));
      if (err === VIX_E_NOT_SUPPORTED && pos === Math.floor(offset / chunkBytes) * chunkBytes) {
        // Some disk types and older hosts cannot answer: everything counts as data.
        yield { offset, length, data: true };
        return;
      }
      if (err !== VIX_OK) throw new VddkError('VixDiskLib_QueryAllocatedBlocks', err, errorText(this.lib, err));
      const blocks = decodeBlockList(out[0]);
      free(out[0]);
      let at = pos;
      for (const [bo, bl] of blocks) {
        const o = bo * SECTOR;
        if (o > at) yield* emit(at, o - at, false);
        yield* emit(o, bl * SECTOR, true);
        at = o + bl * SECTOR;
      }
      if (at < wEnd) yield* emit(at, wEnd - at, false);
      pos = wEnd;
    }
    // A tail shorter than one chunk cannot be queried: report it as data.
    if (end > alignedEnd) yield* emit(alignedEnd, this.capacity - alignedEnd, true);
    if (run) yield run;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pump?.catch(() => undefined);
    await this.syncChain.catch(() => undefined);
    await callAsync(this.lib.Wait, this.handle).catch(() => undefined);
    this.lib.Close(this.handle);
    this.lib.Disconnect(this.conn);
    for (const p of this.pool) koffi.free(p);
    this.pool.length = 0;
    this.release();
  }

  private takeNative(): unknown {
    return this.pool.pop() ?? koffi.alloc('uint8_t', this.maxReadSize + 2 * SECTOR);
  }

  private copyOut(native: unknown, bytes: number, into?: Buffer): Buffer {
    const out = into ?? Buffer.allocUnsafe(bytes);
    Buffer.from(koffi.view(native as never, bytes)).copy(out);
    return out;
  }

  private readSync(startSector: number, sectors: number, into?: Buffer): Promise<Buffer> {
    const run = async (): Promise<Buffer> => {
      if (this.closed) throw new Error('source closed');
      const native = this.takeNative();
      try {
        const err = await callAsync(this.lib.Read, this.handle, startSector, sectors, native);
        if (err !== VIX_OK) throw this.readError(err);
        return this.copyOut(native, sectors * SECTOR, into);
      } finally { this.pool.push(native); }
    };
    const p = this.syncChain.then(run, run);
    this.syncChain = p.catch(() => undefined);
    return p;
  }

  private readAsync(startSector: number, sectors: number, into?: Buffer): Promise<Buffer> {
    if (this.closed) return Promise.reject(new Error('source closed'));
    return new Promise((resolve, reject) => {
      this.queue.push({ startSector, sectors, native: undefined, into, resolve, reject });
      this.pump ??= this.drain().finally(() => { this.pump = undefined; });
    });
  }

  /** Submits queued reads with ReadAsync in batches, then VixDiskLib_Wait on a worker thread. */
  private async drain(): Promise<void> {
    while (this.queue.length) {
      const batch = this.queue.splice(0, this.maxInFlight);
      const done: Array<Promise<void>> = [];
      for (const r of batch) {
        r.native = this.takeNative();
        const id = nextCbId++;
        if (nextCbId > 0x7fffffff) nextCbId = 1;
        done.push(new Promise<void>((fin) => {
          completions.set(id, (result) => {
            if (result === VIX_OK) r.resolve(this.copyOut(r.native, r.sectors * SECTOR, r.into));
            else r.reject(this.readError(result));
            this.pool.push(r.native);
            fin();
          });
        }));
        const err = Number(this.lib.ReadAsync(this.handle, r.startSector, r.sectors, r.native, completionCb, id));
        if (err !== VIX_ASYNC && err !== VIX_OK) {
          completions.get(id)?.(err);
          completions.delete(id);
        }
      }
      const werr = await callAsync(this.lib.Wait, this.handle);
      if (werr !== VIX_OK) this.log.warn({ err: errorText(this.lib, werr) }, 'VixDiskLib_Wait reported an error');
      await Promise.all(done);
    }
  }

  private readError(code: number): VddkError {
    const text = errorText(this.lib, code) + (code === VIX_E_DISK_OUTOFRANGE ? ' (read past the end of the disk)' : '');
    return new VddkError('VixDiskLib_Read', code, text);
  }
}

/** Runs a VDDK call on one of koffi's worker threads, leaving the event loop free for VDDK's callbacks. */
function callAsync(fn: { async: (...args: unknown[]) => void }, ...args: unknown[]): Promise<number> {
  return new Promise((resolve, reject) => {
    fn.async(...args, (err: unknown, r: number | bigint) => (err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve(Number(r))));
  });
}

function connectParams(o: VddkSourceOptions): unknown {
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
  if (o.server && !o.vm) throw new UserError('VDDK_NO_VM', 'a remote VDDK disk needs the VM managed object id (vm-N)', 'pass the VM moref, e.g. vddk://...?vm=vm-42');
  const params = {
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
  void ConnectParamsType;
  return params;
}

function openError(lib: VixLib, call: string, code: number, o: VddkSourceOptions, uri: string): UserError {
  const text = `${call} for ${uri} failed: ${errorText(lib, code)} (VIX error ${code})`;
  if (code === VIX_E_HOST_USER_PERMISSIONS) {
    return new UserError('VDDK_AUTH', `${text}: ${o.server} refused the credentials or the certificate thumbprint`,
      'check the vCenter user and password (or session cookie) and the pinned thumbprint of the server certificate');
  }
  if (code === VIX_E_FILE_NOT_FOUND) {
    return new UserError('VDDK_DISK_NOT_FOUND', `${text}: no disk at ${o.diskPath}`, 'check the disk path ("[datastore] folder/disk.vmdk") of the VM at this snapshot');
  }
  return new UserError('VDDK_OPEN', text, 'check the VDDK transport modes, the VM and snapshot ids and the network path to the ESXi host (NFC port 902)');
}

function displayUri(o: VddkSourceOptions): string {
  if (!o.server) return `vddk://${o.diskPath.startsWith('/') ? '' : '/'}${o.diskPath}`;
  const q = new URLSearchParams();
  if (o.vm) q.set('vm', o.vm);
  if (o.snapshot) q.set('snapshot', o.snapshot);
  return `vddk://${o.server}${o.port ? `:${o.port}` : ''}/${encodeURIComponent(o.diskPath)}?${q.toString()}`;
}
