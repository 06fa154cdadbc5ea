/** Errors worth retrying with backoff: network hiccups, an expired session, a busy task. */
const TRANSIENT_CODES = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN',
  'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT',
  'NotAuthenticated', 'TaskInProgress', 'ConcurrentAccess', 'InvalidState', 'SESSION_EXPIRED', 'TASK_FAILED_TRANSIENT',
  'RECEIVER_UNREACHABLE', 'CONNECTION_LOST',
  // vmlift's own codes for conditions that clear up by themselves: a snapshot or reconfigure task that
  // failed in vCenter (locks, busy host), a task past its timeout, vCenter briefly unreachable.
  'VC_TASK_FAILED', 'VC_TASK_TIMEOUT', 'VC_UNREACHABLE',
]);

/** True when `e` or one of its causes carries a transient code or says so with `transient: true`. */
export function isTransient(e: unknown): boolean {
  for (let cur: unknown = e, depth = 0; cur && depth < 8; depth++) {
    const obj = cur as { code?: unknown; transient?: unknown; faultName?: unknown; cause?: unknown };
    if (obj.transient === true) return true;
    if (typeof obj.code === 'string' && TRANSIENT_CODES.has(obj.code)) return true;
    if (typeof obj.faultName === 'string' && TRANSIENT_CODES.has(obj.faultName)) return true;
    cur = obj.cause;
  }
  return false;
}
