/**
 * The one error vocabulary. Every error vmlift raises on purpose is a `CodedError`: a stable `code`,
 * a `message` naming the cause, a `fix` saying what to do about it, and `transient` when the same
 * call may succeed if tried again. Module errors (StoreError, ProtocolError, NbdError, ...) extend it;
 * `isTransient` reads the flag, so no module keeps a classifier of its own.
 */
export interface CodedErrorOptions {
  fix?: string | undefined;
  /** The same operation may succeed when tried again (a dropped link, a busy server). */
  transient?: boolean | undefined;
  cause?: unknown;
  /** Exit status of the CLI when this error ends it (default 1). */
  exitCode?: number | undefined;
}

export class CodedError extends Error {
  readonly code: string;
  readonly fix: string | undefined;
  readonly transient: boolean;
  readonly exitCode: number;
  constructor(code: string, message: string, opts: CodedErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
    this.code = code;
    this.fix = opts.fix;
    this.transient = opts.transient ?? false;
    this.exitCode = opts.exitCode ?? 1;
  }

  /** What `--json`, `job show` and the APIs carry. */
  toJSON(): ErrorReport {
    return errorReport(this);
  }
}

/**
 * An error a user can cause or meet. `message` names the cause, `fix` says what to do about it.
 * The CLI prints both and exits with `exitCode`.
 */
export class UserError extends CodedError {
  constructor(code: string, message: string, fix?: string, options?: { cause?: unknown; exitCode?: number; transient?: boolean }) {
    super(code, message, { fix, ...options });
  }
}

export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}

/** Errors of the OS and of Node's network stack that a retry can clear (they carry no flag of ours). */
const TRANSIENT_SYSTEM_CODES = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN', 'EAI_AGAIN',
  'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ERR_STREAM_PREMATURE_CLOSE',
  'ERR_STREAM_DESTROYED', 'ERR_SOCKET_CLOSED',
]);

/**
 * True when `e` or one of its causes says it is transient: a CodedError's flag, or a system error
 * code a retry can clear (a wrapper such as a read error after spent retries inherits its cause's).
 */
export function isTransient(e: unknown): boolean {
  for (let cur: unknown = e, depth = 0; cur && depth < 8; depth++) {
    if (cur instanceof CodedError) {
      if (cur.transient) return true;
    } else {
      const obj = cur as { code?: unknown; transient?: unknown };
      if (obj.transient === true) return true;
      if (typeof obj.code === 'string' && TRANSIENT_SYSTEM_CODES.has(obj.code)) return true;
    }
    cur = (cur as { cause?: unknown }).cause;
  }
  return false;
}

export interface ErrorReport {
  code: string;
  message: string;
  fix?: string;
  transient?: boolean;
}

/** The code, message and fix of any thrown value: the first coded error along its causes lends code and fix. */
export function errorReport(e: unknown): ErrorReport {
  const message = errorMessage(e);
  for (let cur: unknown = e, depth = 0; cur && depth < 8; depth++, cur = (cur as { cause?: unknown }).cause) {
    if (cur instanceof CodedError) {
      const r: ErrorReport = { code: cur.code, message };
      if (cur.fix !== undefined) r.fix = cur.fix;
      if (cur.transient) r.transient = true;
      return r;
    }
  }
  const code = (e as { code?: unknown })?.code;
  return { code: typeof code === 'string' ? code : 'INTERNAL', message };
}

/** The message of any thrown value. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
