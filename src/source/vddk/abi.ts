/**
 * koffi declarations of libvixDiskLib (VDDK 6.7 / 7.x / 8.x), mirroring native/vddk-double/vixDiskLib-abi.h,
 * which cites each field of VMware's header. Loading is separate from use so a missing or broken
 * library is reported once, clearly, and transport selection can move on.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import { UserError } from '../../util/errors.ts';

export const VIX_OK = 0;
export const VIX_ASYNC = 25000;
export const VIX_E_OUT_OF_MEMORY = 2;
export const VIX_E_OBJECT_IS_BUSY = 5;
export const VIX_E_FILE_ACCESS_ERROR = 13;
export const VIX_E_OBJECT_NOT_FOUND = 25;
export const VIX_E_FILE_NOT_FOUND = 4;
export const VIX_E_NOT_SUPPORTED = 6;
export const VIX_E_HOST_USER_PERMISSIONS = 3014;
export const VIX_E_DISK_OUTOFRANGE = 16007;
export const VIXDISKLIB_FLAG_OPEN_READ_ONLY = 4;
export const VIXDISKLIB_CRED_UID = 1;
export const VIXDISKLIB_CRED_SESSIONID = 2;
export const SECTOR = 512;
export const MIN_CHUNK_SECTORS = 128;
export const MAX_CHUNK_NUMBER = 512 * 1024;

// Types are registered once per process: koffi names are global.
const T = (() => {
  const UidCreds = koffi.struct('VixDiskLibUidPasswdCreds', { userName: 'char *', password: 'char *' });
  const SessionIdCreds = koffi.struct('VixDiskLibSessionIdCreds', { cookie: 'char *', userName: 'char *', key: 'char *' });
  const Creds = koffi.union('VixDiskLibCreds', { uid: UidCreds, sessionId: SessionIdCreds, ticketId: 'void *' });
  const VStorageObjectSpec = koffi.struct('VixDiskLibVStorageObjectSpec', { id: 'char *', datastoreMoRef: 'char *', ssId: 'char *' });
  const Spec = koffi.union('VixDiskLibSpec', { vStorageObjSpec: VStorageObjectSpec });
  const ConnectParams = koffi.struct('VixDiskLibConnectParams', {
    vmxSpec: 'char *',
    serverName: 'char *',
    thumbPrint: 'char *',
    privateUse: 'long',
    credType: 'int',            // enum VixDiskLibCredType
    creds: Creds,
    port: 'uint32_t',
    nfcHostPort: 'uint32_t',
    reserved3: 'char *',
    reserved4: koffi.array('char', 8),
    reserved5: 'void *',
    spec: Spec,
    specType: 'int',            // enum VixDiskLibSpecType
  });
  const Geometry = koffi.struct('VixDiskLibGeometry', { cylinders: 'uint32_t', heads: 'uint32_t', sectors: 'uint32_t' });
  const Info = koffi.struct('VixDiskLibInfo', {
    biosGeo: Geometry,
    physGeo: Geometry,
    capacity: 'uint64_t',       // sectors
    adapterType: 'int',
    numLinks: 'int',
    parentFileNameHint: 'char *',
    uuid: 'char *',
  });
  // va_list arrives as a pointer on x86-64 and aarch64 Linux (an array type there, a by-reference struct here).
  const LogFunc = koffi.proto('void VixDiskLibGenericLogFunc(const char *fmt, void *args)');
  const CompletionCB = koffi.proto('void VixDiskLibCompletionCB(intptr_t cbData, uint64_t result)');
  return { ConnectParams, Info, LogFunc, CompletionCB };
})();
export const ConnectParamsType = T.ConnectParams;

export interface VixLib {
  file: string;
  InitEx: (major: number, minor: number, log: unknown, warn: unknown, panic: unknown, libDir: string | null, config: string | null) => number | bigint;
  Exit: () => void;
  ConnectEx: (params: unknown, readOnly: number, snapshotRef: string | null, transports: string | null, out: unknown[]) => number | bigint;
  Disconnect: (conn: unknown) => number | bigint;
  Open: (conn: unknown, path: string, flags: number, out: unknown[]) => number | bigint;
  Close: (h: unknown) => number | bigint;
  GetInfo: (h: unknown, out: unknown[]) => number | bigint;
  FreeInfo: (p: unknown) => void;
  GetTransportMode: (h: unknown) => string;
  Read: AsyncCapable<(h: unknown, start: number, n: number, buf: unknown) => number | bigint>;
  ReadAsync: (h: unknown, start: number, n: number, buf: unknown, cb: unknown, cbData: number) => number | bigint;
  Wait: AsyncCapable<(h: unknown) => number | bigint>;
  QueryAllocatedBlocks: ((h: unknown, start: number, n: number, chunk: number, out: unknown[]) => number | bigint) | undefined;
  FreeBlockList: ((p: unknown) => number | bigint) | undefined;
  GetErrorText: (err: number, locale: string | null) => unknown;
  FreeErrorText: (p: unknown) => void;
  vsnprintf: ((buf: Buffer, n: number, fmt: string, ap: unknown) => number) | undefined;
  /** koffi helpers bound to this library's types. */
  registerLog: (fn: (fmt: string, args: unknown) => void) => unknown;
  registerCompletion: (fn: (cbData: number | bigint, result: number | bigint) => void) => unknown;
  decodeInfo: (p: unknown) => { capacity: number | bigint; adapterType: number; numLinks: number; uuid: string | null };
}

type AsyncCapable<F extends (...a: never[]) => unknown> = F & { async: (...args: unknown[]) => void };

export class VddkUnavailableError extends UserError {
  constructor(message: string, cause?: unknown) {
    super('VDDK_UNAVAILABLE', message,
      'install VMware VDDK 7 or 8 (unpack vmware-vix-disklib-distrib) and pass its folder with --vddk-libdir or VMLIFT_VDDK_LIBDIR, or choose another transport (nbd, http-datastore)',
      cause === undefined ? undefined : { cause });
  }
}

/** Candidate library files in a VDDK folder, newest major first (VDDK 8, then 7; 6.7 still has the same ABI). */
export function libraryCandidates(libdir: string): string[] {
  const out: string[] = [];
  for (const sub of ['lib64', '.']) for (const v of ['.9', '.8', '.7', '.6', '']) out.push(path.join(libdir, sub, `libvixDiskLib.so${v}`));
  return out;
}

const loaded = new Map<string, VixLib>();

export function loadVixDiskLib(libdir: string | undefined): VixLib {
  if (!libdir) throw new VddkUnavailableError('no VDDK library folder given (--vddk-libdir / VMLIFT_VDDK_LIBDIR is not set)');
  const file = libraryCandidates(libdir).find((f) => existsSync(f));
  if (!file) throw new VddkUnavailableError(`no libvixDiskLib.so found in ${libdir} (looked in ${libdir}/lib64 and ${libdir})`);
  const cached = loaded.get(file);
  if (cached) return cached;
  let lib: koffi.IKoffiLib;
  try {
    lib = koffi.load(file);
  } catch (e) {
    throw new VddkUnavailableError(`cannot load ${file}: ${e instanceof Error ? e.message : String(e)}`, e);
  }
  const need = <F>(decl: string): F => {
    try { return lib.func(decl) as F; } catch (e) {
      throw new VddkUnavailableError(`${file} is not a usable libvixDiskLib: ${e instanceof Error ? e.message : String(e)}`, e);
    }
  };
  const optional = <F>(decl: string): F | undefined => { try { return lib.func(decl) as F; } catch { return undefined; } };
  let vsnprintf: VixLib['vsnprintf'];
  if (process.platform === 'linux' && (process.arch === 'x64' || process.arch === 'arm64')) {
    try { vsnprintf = koffi.load('libc.so.6').func('int vsnprintf(_Out_ uint8_t *buf, size_t n, const char *fmt, void *ap)') as VixLib['vsnprintf']; } catch { vsnprintf = undefined; }
  }
  const v: VixLib = {
    file,
    InitEx: need('uint64_t VixDiskLib_InitEx(uint32_t, uint32_t, VixDiskLibGenericLogFunc *, VixDiskLibGenericLogFunc *, VixDiskLibGenericLogFunc *, const char *, const char *)'),
    Exit: need('void VixDiskLib_Exit(void)'),
    ConnectEx: need('uint64_t VixDiskLib_ConnectEx(const VixDiskLibConnectParams *, char, const char *, const char *, _Out_ void **)'),
    Disconnect: need('uint64_t VixDiskLib_Disconnect(void *)'),
    Open: need('uint64_t VixDiskLib_Open(void *, const char *, uint32_t, _Out_ void **)'),
    Close: need('uint64_t VixDiskLib_Close(void *)'),
    GetInfo: need('uint64_t VixDiskLib_GetInfo(void *, _Out_ void **)'),
    FreeInfo: need('void VixDiskLib_FreeInfo(void *)'),
    GetTransportMode: need('const char *VixDiskLib_GetTransportMode(void *)'),
    Read: need('uint64_t VixDiskLib_Read(void *, uint64_t, uint64_t, void *)'),
    ReadAsync: need('uint64_t VixDiskLib_ReadAsync(void *, uint64_t, uint64_t, void *, VixDiskLibCompletionCB *, intptr_t)'),
    Wait: need('uint64_t VixDiskLib_Wait(void *)'),
    QueryAllocatedBlocks: optional('uint64_t VixDiskLib_QueryAllocatedBlocks(void *, uint64_t, uint64_t, uint64_t, _Out_ void **)'),
    FreeBlockList: optional('uint64_t VixDiskLib_FreeBlockList(void *)'),
    GetErrorText: need('void *VixDiskLib_GetErrorText(uint64_t, const char *)'),
    FreeErrorText: need('void VixDiskLib_FreeErrorText(void *)'),
    vsnprintf,
    registerLog: (fn) => koffi.register(fn, koffi.pointer(T.LogFunc)),
    registerCompletion: (fn) => koffi.register(fn, koffi.pointer(T.CompletionCB)),
    decodeInfo: (p) => koffi.decode(p, T.Info) as ReturnType<VixLib['decodeInfo']>,
  };
  loaded.set(file, v);
  return v;
}

/** Blocks of a VixDiskLibBlockList as [offsetSectors, lengthSectors] pairs. */
export function decodeBlockList(p: unknown): Array<[number, number]> {
  const n = koffi.decode(p, 'uint32_t') as number;
  if (n === 0) return [];
  const flat = koffi.decode(p, 8, koffi.array('uint64_t', n * 2, 'Array')) as Array<number | bigint>;
  const out: Array<[number, number]> = [];
  for (let i = 0; i < n; i++) out.push([Number(flat[2 * i]), Number(flat[2 * i + 1])]);
  return out;
}

export function errorText(lib: VixLib, err: number | bigint): string {
  const p = lib.GetErrorText(Number(err), null);
  if (!p) return `VDDK error ${err}`;
  try { return koffi.decode(p, 'char', -1) as string; } finally { lib.FreeErrorText(p); }
}

export { koffi };
