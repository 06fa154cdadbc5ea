import { CodedError } from '../../util/errors.ts';

/**
 * An NBD failure. `retryable` (the option): a fresh connection may succeed (dropped socket, timeout,
 * transient server I/O error); it is the error's `transient` flag, which the one retry policy reads.
 */
export class NbdError extends CodedError {
  /** The disk offset of the request that failed, when the failure belongs to one request. */
  readonly offset: number | undefined;
  constructor(message: string, opts: { retryable: boolean; offset?: number; cause?: unknown }) {
    super('NBD_ERROR', message, {
      transient: opts.retryable,
      cause: opts.cause,
      fix: 'check the NBD server (its log names the failing request) and the network path to it',
    });
    this.offset = opts.offset;
  }
}
