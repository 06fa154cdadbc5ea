/**
 * VDDK failures as vmlift's coded errors: a failed call on an open disk (VddkError), an NFC resource
 * error of the ESXi host (VddkNfcResourceError, transient: back off and open fewer disks on that
 * host), and the open-time errors with their cause and fix.
 */
import { CodedError, UserError } from '../../util/errors.ts';
import {
  errorText, VIX_E_FILE_ACCESS_ERROR, VIX_E_FILE_NOT_FOUND, VIX_E_HOST_USER_PERMISSIONS, VIX_E_OBJECT_IS_BUSY,
  VIX_E_OBJECT_NOT_FOUND, VIX_E_OUT_OF_MEMORY, type VixLib,
} from './abi.ts';

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

/**
 * The ESXi host's NFC server could not take the request ("NFC error 5 ... Failed to allocate the
 * requested N bytes", which VDDK returns as VIX_E_OUT_OF_MEMORY): too many disks or too large reads
 * on that host at once. Transient: the caller backs off and lowers its concurrent-disk limit for
 * `host` (code VDDK_NFC_RESOURCE).
 */
export class VddkNfcResourceError extends CodedError {
  readonly vixCode: number;
  /** The ESXi host (or the server when unknown) whose NFC limits were hit. */
  readonly host: string;
  constructor(call: string, code: number, text: string, host: string, nfcMessage: string | undefined) {
    super('VDDK_NFC_RESOURCE', `${call} failed: ${text} (VIX error ${code}): the NFC server of ${host} is out of resources` +
      (nfcMessage ? ` (${nfcMessage})` : ''), {
      transient: true,
      fix: `open fewer disks at once on ${host} or read smaller blocks (maxReadSize); the NFC buffer settings of the VDDK config file (vixDiskLib.nfcAio.Session.BufSizeIn64KB, BufCount) also bound it`,
    });
    this.vixCode = code;
    this.host = host;
  }
}

/** True when `e` or one of its causes is an NFC resource error (a read error after retries wraps it). */
export function isVddkNfcResourceError(e: unknown): e is VddkNfcResourceError {
  for (let cur: unknown = e, depth = 0; cur && depth < 8; depth++) {
    if (cur instanceof VddkNfcResourceError) return true;
    cur = (cur as { cause?: unknown }).cause;
  }
  return false;
}

/** The error a failed read on an open disk raises. */
export function readError(lib: VixLib, code: number, host: string, nfcMessage: string | undefined, suffix = ''): CodedError {
  const text = errorText(lib, code) + suffix;
  if (code === VIX_E_OUT_OF_MEMORY) return new VddkNfcResourceError('VixDiskLib_Read', code, text, host, nfcMessage);
  return new VddkError('VixDiskLib_Read', code, text);
}

export interface OpenErrorContext { server?: string | undefined; vm?: string | undefined; snapshot?: string | undefined; diskPath: string; host: string }

/** The error a failed ConnectEx, Open or GetInfo raises, naming the cause and the fix. */
export function openError(lib: VixLib, call: string, code: number, o: OpenErrorContext, uri: string, nfcMessage?: string): CodedError {
  const text = `${call} for ${uri} failed: ${errorText(lib, code)} (VIX error ${code})`;
  if (code === VIX_E_HOST_USER_PERMISSIONS) {
    return new UserError('VDDK_AUTH', `${text}: ${o.server} refused the credentials or the certificate thumbprint`,
      'check the vCenter user and password (or session cookie) and the pinned SHA-1 thumbprint of the server certificate');
  }
  if (code === VIX_E_FILE_NOT_FOUND) {
    return new UserError('VDDK_DISK_NOT_FOUND', `${text}: no disk ${o.diskPath}${o.snapshot ? ` in snapshot ${o.snapshot}` : ''}`,
      'open the disk by the file name the snapshot\'s config gives it ("[datastore] folder/disk-000001.vmdk" for a delta)');
  }
  if (code === VIX_E_OBJECT_NOT_FOUND) {
    return new UserError('VDDK_OBJECT_NOT_FOUND', `${text}: ${o.server} knows no VM ${o.vm ?? '(none)'}${o.snapshot ? ` or no snapshot ${o.snapshot} of it` : ''}`,
      'check the VM and snapshot managed object ids (vm-N, snapshot-N): the VM may be gone or the snapshot removed');
  }
  if (code === VIX_E_FILE_ACCESS_ERROR) {
    return new UserError('VDDK_DISK_IN_USE', `${text}: the running VM holds ${o.diskPath}`,
      'read the disk at a snapshot (snapshotRef) rather than the live disk');
  }
  if (code === VIX_E_OUT_OF_MEMORY) return new VddkNfcResourceError(call, code, errorText(lib, code), o.host, nfcMessage);
  return new UserError('VDDK_OPEN', text, 'check the VDDK transport modes, the VM and snapshot ids and the network path to the ESXi host (NFC port 902)');
}
