/**
 * An error a user can cause or meet. `message` names the cause, `fix` says what to do about it.
 * The CLI prints both and exits with `exitCode`.
 */
export class UserError extends Error {
  readonly fix: string | undefined;
  readonly exitCode: number;
  readonly code: string;
  constructor(code: string, message: string, fix?: string, options?: { cause?: unknown; exitCode?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'UserError';
    this.code = code;
    this.fix = fix;
    this.exitCode = options?.exitCode ?? 1;
  }
}

export function isUserError(e: unknown): e is UserError {
  return e instanceof UserError;
}

/** The message of any thrown value. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
