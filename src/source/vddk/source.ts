/**
 * The VDDK reader: a BlockSource over libvixDiskLib through koffi (abi.ts declares the ABI, library.ts
 * holds the process-wide state): ConnectEx per VM and snapshot with the job's transport modes, Open of
 * the disk path the snapshot's config names, sector-aligned reads through a bounded ReadAsync queue
 * (or Read), allocated blocks, per-host open slots, and VDDK error codes as coded errors with a fix.
 */
import type { BlockSource, SourceExtent } from '../types.ts';
import { UserError } from '../../util/errors.ts';
import { silentLogger, type Logger } from '../../util/log.ts';
import { retryingSource, type RetryPolicy } from '../retry.ts';
import { clampReads } from '../clamp.ts';
import { PositionalReader } from '../positional.ts';
import {
  decodeBlockList, errorText, koffi, MAX_CHUNK_NUMBER, MIN_CHUNK_SECTORS, SECTOR,
  VIX_ASYNC, VIX_E_DISK_OUTOFRANGE, VIX_E_NOT_SUPPORTED, VIX_OK, VIXDISKLIB_FLAG_OPEN_READ_ONLY, type VixLib,
} from './abi.ts';
import { completion, connect, dropCompletion, initVddk, lastNfcError, registerOpenDisk, type VddkCredentials } from './library.ts';
import { openError, readError, VddkError } from './errors.ts';
import { Semaphore } from '../../util/semaphore.ts';

export type { VddkCredentials } from './library.ts';

/** What a remote server is: vCenter (NFC through it: small reads) or an ESXi host directly. */
export type VddkServerKind = 'vcenter' | 'esxi';

/** Read sizes NFC takes: about 2 MiB through vCenter, up to about 23 MiB against ESXi directly (CDI's figures). */
export const VDDK_MAX_READ_VCENTER = 2 << 20;
export const VDDK_MAX_READ_ESXI = 23 << 20;
export const VDDK_MAX_READ_LOCAL = 8 << 20;

/** The default maxReadSize for a server of this kind (no server: a local disk). */
export function vddkMaxReadSize(server: string | undefined, kind: VddkServerKind = 'vcenter'): number {
  if (!server) return VDDK_MAX_READ_LOCAL;
  return kind === 'esxi' ? VDDK_MAX_READ_ESXI : VDDK_MAX_READ_VCENTER;
}

/** Allocated byte ranges of a disk, in order (what QueryAllocatedBlocks answers). */
export interface AllocatedRange { offset: number; length: number }

export interface VddkSourceOptions {
  /** VDDK folder (the one holding lib64/); default VMLIFT_VDDK_LIBDIR. */
  libdir?: string;
  /** VDDK configuration file passed to InitEx (once per process: library.ts initVddk). */
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
  /** VDDK transport modes in order of preference (default "nbdssl:nbd"; "hotadd", "san" on request). */
  transports?: string;
  /** vCenter (default) or an ESXi host connected directly: sets the default maxReadSize. */
  serverKind?: VddkServerKind;
  /** Largest read handed to VDDK (default vddkMaxReadSize: 2 MiB through vCenter, 23 MiB to ESXi, 8 MiB local); longer reads are split. */
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

// ---- open disks per ESXi host ----

/** Disks open per ESXi host in this process (VMware's NFC connection limits); the first open for a host sets its limit. */
const hostSlots = new Map<string, Semaphore>();

function acquireHost(host: string, limit: number): Promise<() => void> {
  let s = hostSlots.get(host);
  if (!s) hostSlots.set(host, s = new Semaphore(limit));
  return s.acquire();
}

interface Req { startSector: number; sectors: number; native: unknown; into: Buffer | undefined; resolve: (b: Buffer) => void; reject: (e: Error) => void }

/** QueryAllocatedBlocks answered VIX_E_NOT_SUPPORTED (or the library lacks it). */
const NOT_SUPPORTED = Symbol('not supported');

/**
 * A BlockSource over libvixDiskLib: a disk of a VM (at a snapshot) through vCenter/ESXi, or a local VMDK.
 * `open` returns it with reads clamped to maxReadSize (longer ones split) under the retry wrapper;
 * its own reads and queries try once and throw VddkError / VddkNfcResourceError.
 */
export class VddkSource extends PositionalReader implements BlockSource {
  readonly transport = 'vddk';
  readonly uri: string;
  readonly capacity: number;
  readonly maxReadSize: number;
  readonly maxInFlight: number;
  /** The transport VDDK picked (nbdssl, nbd, hotadd, san, file). */
  readonly transportMode: string;
  /** The ESXi host (or server) whose limits this disk counts against. */
  readonly host: string;
  private readonly lib: VixLib;
  private handle: unknown;
  private readonly releaseConn: () => void;
  private readonly releaseSlot: () => void;
  private readonly unregister: () => void;
  private readonly mode: 'async' | 'sync';
  private readonly log: Logger;
  private queue: Req[] = [];
  private inFlight = 0;
  private readonly idleWaiters: Array<() => void> = [];
  private syncChain: Promise<unknown> = Promise.resolve();
  private pending = 0;
  private readonly pool: unknown[] = [];
  private closed = false;

  private constructor(lib: VixLib, handle: unknown, capacity: number, releaseConn: () => void, releaseSlot: () => void, uri: string, host: string, opts: VddkSourceOptions) {
    super();
    this.lib = lib;
    this.handle = handle;
    this.capacity = capacity;
    this.releaseConn = releaseConn;
    this.releaseSlot = releaseSlot;
    this.uri = uri;
    this.host = host;
    this.transportMode = lib.GetTransportMode(handle);
    const max = opts.maxReadSize ?? vddkMaxReadSize(opts.server, opts.serverKind);
    this.maxReadSize = Math.max(SECTOR, Math.floor(max / SECTOR) * SECTOR);
    this.mode = opts.mode ?? 'async';
    this.maxInFlight = this.mode === 'sync' ? 1 : Math.max(1, opts.maxInFlight ?? 8);
    this.log = opts.logger ?? silentLogger;
    this.unregister = registerOpenDisk({ idle: () => this.pending === 0, closeSync: () => this.closeHandles() });
  }

  static async open(opts: VddkSourceOptions): Promise<VddkSource> {
    const log = opts.logger ?? silentLogger;
    const lib = initVddk({ libdir: opts.libdir, configFile: opts.configFile, logger: log });
    const uri = displayUri(opts);
    if (opts.server && !opts.vm) throw new UserError('VDDK_NO_VM', 'a remote VDDK disk needs the VM managed object id (vm-N)', 'pass the VM moref, e.g. vddk://...?vm=vm-42');
    const host = opts.esxiHost ?? opts.server ?? 'localhost';
    const ctx = { server: opts.server, vm: opts.vm, snapshot: opts.snapshot, diskPath: opts.diskPath, host };
    const releaseSlot = await acquireHost(host, opts.maxOpenDisksPerHost ?? 8);
    let releaseConn: (() => void) | undefined;
    let handle: unknown;
    try {
      const c = connect(lib, { ...opts, transports: opts.server ? (opts.transports ?? 'nbdssl:nbd') : undefined });
      if ('err' in c) throw openError(lib, 'VixDiskLib_ConnectEx', c.err, ctx, uri, lastNfcError());
      releaseConn = c.release;
      const h: unknown[] = [null];
      let err = Number(lib.Open(c.conn, opts.diskPath, VIXDISKLIB_FLAG_OPEN_READ_ONLY, h));
      if (err !== VIX_OK) throw openError(lib, 'VixDiskLib_Open', err, ctx, uri, lastNfcError());
      handle = h[0];
      const ip: unknown[] = [null];
      err = Number(lib.GetInfo(handle, ip));
      if (err !== VIX_OK) throw openError(lib, 'VixDiskLib_GetInfo', err, ctx, uri);
      const info = lib.decodeInfo(ip[0]);
      lib.FreeInfo(ip[0]);
      const src = new VddkSource(lib, handle, Number(info.capacity) * SECTOR, releaseConn, releaseSlot, uri, host, opts);
      log.info({ uri, transport: src.transportMode, capacity: src.capacity, adapterType: info.adapterType, maxReadSize: src.maxReadSize }, 'vddk disk opened');
      return clampReads(retryingSource(src, opts.retry, log));
    } catch (e) {
      if (handle) lib.Close(handle);
      releaseConn?.();
      releaseSlot();
      throw e;
    }
  }

  protected async readAt(offset: number, length: number, target: Buffer | undefined): Promise<Buffer> {
    if (length === 0) return Buffer.alloc(0);
    return this.readAligned(offset, length, target, SECTOR, (start, n, into) =>
      this.mode === 'sync' ? this.readSync(start / SECTOR, n / SECTOR, into) : this.readAsync(start / SECTOR, n / SECTOR, into));
  }

  /**
   * The allocated byte ranges of the whole disk from VixDiskLib_QueryAllocatedBlocks (VDDK >= 6.7), for
   * a first cycle; undefined when the library or the disk cannot tell (VIX_E_NOT_SUPPORTED), so the
   * caller asks QueryChangedDiskAreas "*" instead. A tail shorter than one chunk counts as allocated.
   */
  async allocatedRanges(): Promise<AllocatedRange[] | undefined> {
    const out: AllocatedRange[] = [];
    try {
      for await (const e of this.queryAllocated(0, this.capacity)) {
        if (!e.data) continue;
        const last = out[out.length - 1];
        if (last && last.offset + last.length === e.offset) last.length += e.length;
        else out.push({ offset: e.offset, length: e.length });
      }
    } catch (e) {
      if (e === NOT_SUPPORTED) return undefined;
      throw e;
    }
    return out;
  }

  /** Allocated areas from VixDiskLib_QueryAllocatedBlocks; all data when the library cannot tell. */
  async *extents(offset = 0, length = this.capacity - offset): AsyncIterable<SourceExtent> {
    const end = offset + length;
    if (offset < 0 || length < 0 || end > this.capacity) throw new RangeError(`extents of [${offset}, ${end}) are outside ${this.uri} (capacity ${this.capacity})`);
    if (length <= 0) return;
    const it = this.queryAllocated(offset, length)[Symbol.asyncIterator]();
    let first: IteratorResult<SourceExtent>;
    try { first = await it.next(); } catch (e) {
      if (e !== NOT_SUPPORTED) throw e;
      // Some disk types and older hosts cannot answer: everything counts as data.
      yield { offset, length, data: true };
      return;
    }
    for (let r = first; !r.done; r = await it.next()) yield r.value;
  }

  private async *queryAllocated(offset: number, length: number): AsyncGenerator<SourceExtent> {
    const end = offset + length;
    const q = this.lib.QueryAllocatedBlocks;
    const free = this.lib.FreeBlockList;
    if (!q || !free) throw NOT_SUPPORTED;
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
      if (err === VIX_E_NOT_SUPPORTED) throw NOT_SUPPORTED;
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

  /** Waits for the reads in flight, then Close, Disconnect (with the connection's last disk) and the host slot. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const r of this.queue.splice(0)) r.reject(new Error('source closed'));
    await this.drained();
    await this.syncChain.catch(() => undefined);
    await callAsync(this.lib.Wait, this.handle).catch(() => undefined);
    this.closeHandles();
  }

  /** Close, Disconnect, buffers and slot, synchronously (also at process exit, when no read is in flight). */
  private closeHandles(): void {
    this.closed = true;
    if (this.handle) {
      this.lib.Close(this.handle);
      this.handle = undefined;
      this.releaseConn();
      for (const p of this.pool) koffi.free(p);
      this.pool.length = 0;
      this.releaseSlot();
      this.unregister();
    }
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
      this.pending++;
      try {
        const err = await callAsync(this.lib.Read, this.handle, startSector, sectors, native);
        if (err !== VIX_OK) throw this.readError(err);
        return this.copyOut(native, sectors * SECTOR, into);
      } finally {
        this.pool.push(native);
        if (--this.pending === 0) for (const f of this.idleWaiters.splice(0)) f();
      }
    };
    const p = this.syncChain.then(run, run);
    this.syncChain = p.catch(() => undefined);
    return p;
  }

  private readAsync(startSector: number, sectors: number, into?: Buffer): Promise<Buffer> {
    if (this.closed) return Promise.reject(new Error('source closed'));
    return new Promise((resolve, reject) => {
      this.queue.push({ startSector, sectors, native: undefined, into, resolve, reject });
      this.submit();
    });
  }

  /**
   * Keeps at most maxInFlight ReadAsync calls submitted: each completion (VDDK calls it from its own
   * thread; koffi runs it on the event loop) submits the next queued read. No thread waits in
   * VixDiskLib_Wait while reads are in flight, so an exiting process is never held by one (libuv joins
   * its worker threads at exit); close() calls Wait once the queue is empty.
   */
  private submit(): void {
    while (this.queue.length && this.inFlight < this.maxInFlight && !this.closed) {
      const r = this.queue.shift()!;
      // A caller's buffer of exactly the read's size is read into directly (Node's buffers do not
      // move; the request keeps it alive until the completion): no copy on the event loop.
      const direct = r.into !== undefined && r.into.length === r.sectors * SECTOR;
      r.native = direct ? r.into : this.takeNative();
      this.inFlight++;
      this.pending++;
      const { id, cb } = completion((result) => {
        if (result === VIX_OK) r.resolve(direct ? r.into! : this.copyOut(r.native, r.sectors * SECTOR, r.into));
        else r.reject(this.readError(result));
        if (!direct) this.pool.push(r.native);
        this.inFlight--;
        this.pending--;
        if (this.pending === 0) for (const f of this.idleWaiters.splice(0)) f();
        queueMicrotask(() => this.submit());
      });
      const err = Number(this.lib.ReadAsync(this.handle, r.startSector, r.sectors, r.native, cb, id));
      if (err !== VIX_ASYNC && err !== VIX_OK) dropCompletion(id)?.(err);
    }
  }

  /** Resolves once no read is queued or in flight. */
  private drained(): Promise<void> {
    if (this.pending === 0 && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private readError(code: number): Error {
    return readError(this.lib, code, this.host, lastNfcError(), code === VIX_E_DISK_OUTOFRANGE ? ' (read past the end of the disk)' : '');
  }
}

/** Runs a VDDK call on one of koffi's worker threads, leaving the event loop free for VDDK's callbacks. */
function callAsync(fn: { async: (...args: unknown[]) => void }, ...args: unknown[]): Promise<number> {
  return new Promise((resolve, reject) => {
    fn.async(...args, (err: unknown, r: number | bigint) => (err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve(Number(r))));
  });
}

function displayUri(o: VddkSourceOptions): string {
  if (!o.server) return `vddk://${o.diskPath.startsWith('/') ? '' : '/'}${o.diskPath}`;
  const q = new URLSearchParams();
  if (o.vm) q.set('vm', o.vm);
  if (o.snapshot) q.set('snapshot', o.snapshot);
  return `vddk://${o.server}${o.port ? `:${o.port}` : ''}/${encodeURIComponent(o.diskPath)}?${q.toString()}`;
}
