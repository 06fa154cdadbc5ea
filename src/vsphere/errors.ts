import { CodedError, UserError } from '../util/errors.ts';

/** Faults that clear up by themselves: an expired session, a task or lock in the way, a VM between states. */
const TRANSIENT_FAULTS = new Set(['NotAuthenticated', 'TaskInProgress', 'ConcurrentAccess', 'InvalidState']);

const BUSY_FIX = 'wait for the VM\'s running task to finish (vSphere Client: Monitor → Tasks) and retry';
/** What to do about the faults a vmlift user meets; other faults get DEFAULT_FAULT_FIX. */
const FAULT_FIXES: Record<string, string> = {
  NoPermission: 'give the vmlift user a role with Virtual machine → Snapshot management, Configuration (Change settings, Toggle disk change tracking), Provisioning (Allow read-only disk access, Allow disk access) and Datastore → Browse datastore',
  ManagedObjectNotFound: 'refresh the inventory (`vmlift vc ls`) and retry',
  TaskInProgress: BUSY_FIX,
  InvalidState: BUSY_FIX,
  InvalidPowerState: BUSY_FIX,
  NotAuthenticated: 'check that the vmlift user still exists and its password has not changed',
  RestrictedVersion: 'give the ESXi host a license that includes the vSphere API (a paid vSphere edition or the evaluation period): the free vSphere Hypervisor license allows reads only, and no vCenter can manage such a host',
};
/** Faults with a code of their own (others are VC_FAULT). */
const FAULT_CODES: Record<string, string> = { RestrictedVersion: 'VC_HOST_LICENSE' };
const DEFAULT_FAULT_FIX = 'see the vCenter logs or the task list for details; retry if the cause was transient';

/** A SOAP fault from vCenter: `type` is the vim25 fault type (NotAuthenticated, InvalidArgument, …). */
export class VimFault extends CodedError {
  constructor(readonly type: string, message: string, readonly method: string, readonly detail: Record<string, string>) {
    super(FAULT_CODES[type] ?? 'VC_FAULT', message, { fix: FAULT_FIXES[type] ?? DEFAULT_FAULT_FIX, transient: TRANSIENT_FAULTS.has(type) });
  }
}

const unescape = (s: string) => s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&apos;/g, "'").replace(/&amp;/g, '&');

/** The first element inside <detail>: its name, attributes and content ('' when self-closing). */
function detailElement(xml: string): { name: string; attrs: string; content: string } | null {
  const open = /<(?:[\w-]+:)?detail[^>]*>\s*<([\w:.-]+)([^>]*?)(\/?)>/.exec(xml);
  if (!open) return null;
  const [, name, attrs, selfClosing] = open as unknown as [string, string, string, string];
  if (selfClosing) return { name, attrs, content: '' };
  const rest = xml.slice(open.index + open[0].length);
  const close = rest.indexOf(`</${name}>`);
  return { name, attrs, content: close < 0 ? '' : rest.slice(0, close) };
}

/** Reads a SOAP 1.1 fault envelope as vCenter writes it, with open and close or self-closing elements. */
export function parseFault(xml: string, method: string): VimFault | null {
  if (!/<(?:[\w-]+:)?Fault[\s>]/.test(xml)) return null;
  const fs = /<faultstring[^>]*>([\s\S]*?)<\/faultstring>/.exec(xml);
  const message = fs ? unescape(fs[1]!.trim()) : 'unknown fault';
  let type = 'SystemError';
  const detail: Record<string, string> = {};
  const d = detailElement(xml);
  if (d) {
    const attrType = /(?:^|\s)[\w-]+:type="(?:[\w-]+:)?(\w+)"/.exec(d.attrs);
    type = attrType ? attrType[1]! : d.name.replace(/^.*:/, '').replace(/Fault$/, '');
    for (const m of d.content.matchAll(/<(?:[\w-]+:)?(\w+)[^>]*>([^<]*)<\//g)) detail[m[1]!] = unescape(m[2]!);
  } else if (/session is not authenticated/i.test(message)) {
    // a fault without detail still says what it is in its faultstring
    type = 'NotAuthenticated';
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
    'check --server (https://HOST/sdk), that vCenter is running, and that this machine can reach it on port 443', { cause, transient: true });
}

/** 502, 503, 504: what vCenter's reverse proxy answers while vpxd restarts or is overloaded. */
export function isUnavailableStatus(status: number): boolean {
  return status === 502 || status === 503 || status === 504;
}

/** vCenter answered without a SOAP fault that it cannot serve now (restarting, overloaded): transient. */
export function unavailable(server: string, method: string, status: number, cause?: unknown): UserError {
  return new UserError('VC_UNAVAILABLE', `vCenter at ${server} answered ${method} with HTTP ${status}: it is restarting or overloaded`,
    'wait until vCenter answers again (the vSphere Client loads); the job retries by itself, and `vmlift job resume JOB` after a longer outage', { cause, transient: true });
}

export function taskFailed(what: string, message: string, faultType?: string): UserError {
  // a snapshot or reconfigure task fails on locks or a busy host more often than for good
  return new UserError('VC_TASK_FAILED', `${what} failed in vCenter: ${message}${faultType ? ` (${faultType})` : ''}`,
    'read the task in the vSphere Client (Monitor → Tasks) for details; retry once the cause is cleared', { transient: true });
}

/** A user-facing message for the faults a vmlift user meets (others keep vCenter's words), with the fault's fix. */
export function faultToUserError(f: VimFault): UserError {
  const d = f.detail;
  const user = (code: string, message: string) => new UserError(code, message, f.fix, { cause: f });
  switch (f.type) {
    case 'NoPermission':
      return user('VC_NO_PERMISSION', `the vCenter user lacks privilege ${d.privilegeId ?? '?'} for ${f.method}${d.object ? ` on ${d.object}` : ''}`);
    case 'ManagedObjectNotFound':
      return user('VC_OBJECT_GONE', `the object ${d.obj ?? ''} no longer exists in vCenter (${f.method})`);
    case 'TaskInProgress':
    case 'InvalidState':
    case 'InvalidPowerState':
      return user('VC_BUSY', `vCenter refused ${f.method}: ${f.message} (${f.type})`);
    case 'RestrictedVersion':
      return user('VC_HOST_LICENSE', `the ESXi host refused ${f.method}: its license makes the vSphere API read-only (RestrictedVersion: ${f.message})`);
    case 'NotAuthenticated':
      return user('VC_SESSION', `the vCenter session ended and logging in again failed (${f.method})`);
    default:
      return user('VC_FAULT', `vCenter ${f.method} failed: ${f.type}: ${f.message}`);
  }
}

/**
 * vCenter's answer is not one vmlift reads: too large, not XML, with a DTD, nested too deep, or
 * unparsable. Never transient: the same server gives the same answer.
 */
export function badResponse(server: string, why: string, cause?: unknown): UserError {
  return new UserError('VC_BAD_RESPONSE', `the answer from ${server} was refused: ${why}`,
    'check that --server is the vCenter (or ESXi) SDK URL and that no proxy or portal answers in its place; ' +
    'for a very large inventory, raise VMLIFT_VC_MAX_RESPONSE_MIB', { cause });
}
