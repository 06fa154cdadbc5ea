import { UserError } from '../util/errors.ts';

/** A SOAP fault from vCenter: `type` is the vim25 fault type (NotAuthenticated, InvalidArgument, …). */
export class VimFault extends Error {
  constructor(readonly type: string, message: string, readonly method: string, readonly detail: Record<string, string>) {
    super(message);
    this.name = 'VimFault';
  }
}

const unescape = (s: string) => s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&apos;/g, "'").replace(/&amp;/g, '&');

/** Reads a SOAP 1.1 fault envelope as vCenter writes it. */
export function parseFault(xml: string, method: string): VimFault | null {
  if (!/<(?:[\w-]+:)?Fault[\s>]/.test(xml)) return null;
  const fs = /<faultstring[^>]*>([\s\S]*?)<\/faultstring>/.exec(xml);
  const message = fs ? unescape(fs[1]!.trim()) : 'unknown fault';
  let type = 'SystemError';
  const detail: Record<string, string> = {};
  const d = /<detail[^>]*>\s*<([\w:-]+)([^>]*)>([\s\S]*?)<\/\1>/.exec(xml);
  if (d) {
    const attrType = /\b[\w-]*:?type="(?:[\w-]+:)?([\w]+)"/.exec(d[2]!);
    type = attrType ? attrType[1]! : d[1]!.replace(/^.*:/, '').replace(/Fault$/, '');
    for (const m of d[3]!.matchAll(/<(?:[\w-]+:)?(\w+)[^>]*>([^<]*)<\//g)) detail[m[1]!] = unescape(m[2]!);
  }
  return new VimFault(type, message, method, detail);
}

export function isFault(e: unknown, type: string): e is VimFault {
  return e instanceof VimFault && e.type === type;
}

/** vCenter could not be reached at all. */
export function unreachable(server: string, cause: unknown): UserError {
  const code = (cause as { code?: string })?.code ?? (cause as { cause?: { code?: string } })?.cause?.code;
  const why = code === 'ECONNREFUSED' ? 'connection refused'
    : code === 'ENOTFOUND' ? 'host name not found'
    : code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'ETIMEDOUT' ? 'connection timed out'
    : (cause as Error)?.message ?? String(cause);
  return new UserError('VC_UNREACHABLE', `cannot reach vCenter at ${server}: ${why}`,
    'check --server (https://HOST/sdk), that vCenter is running, and that this machine can reach it on port 443', { cause });
}

export function taskFailed(what: string, message: string, faultType?: string): UserError {
  return new UserError('VC_TASK_FAILED', `${what} failed in vCenter: ${message}${faultType ? ` (${faultType})` : ''}`,
    'read the task in the vSphere Client (Monitor → Tasks) for details; retry once the cause is cleared');
}
