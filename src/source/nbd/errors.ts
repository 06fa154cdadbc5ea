/** An NBD failure. `retryable`: a fresh connection may succeed (dropped socket, timeout, transient server I/O error). */
export class NbdError extends Error {
  readonly retryable: boolean;
  /** The disk offset of the request that failed, when the failure belongs to one request. */
  readonly offset: number | undefined;
  constructor(message: string, opts: { retryable: boolean; offset?: number; cause?: unknown }) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'NbdError';
    this.retryable = opts.retryable;
    this.offset = opts.offset;
  }
}
