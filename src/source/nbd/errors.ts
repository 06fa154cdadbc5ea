import { CodedError } from '../../util/errors.ts';

/**
 * An NBD failure. `transient`: a fresh connection may succeed (dropped socket, timeout, transient
 * server I/O error); the one retry policy reads it.
 */
export class NbdError extends CodedError {
  /** The disk offset of the request that failed, when the failure belongs to one request. */
  readonly offset: number | undefined;
  constructor(message: string, opts: { transient: boolean; offset?: number; cause?: unknown }) {
    super('NBD_ERROR', message, {
      transient: opts.transient,
      cause: opts.cause,
      fix: 'check the NBD server (its log names the failing request) and the network path to it',
    });
    this.offset = opts.offset;
  }
}
