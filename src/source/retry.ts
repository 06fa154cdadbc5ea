import { setTimeout as sleep } from 'node:timers/promises';
import { CodedError, errorMessage, isTransient } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';
import type { BlockSource, SourceExtent } from './types.ts';
import { wrapSource } from './wrap.ts';

/** How every reader retries, at open and per read. */
export interface RetryPolicy {
  /** Attempts in all, first one included (default 4). */
  attempts?: number;
  /** First wait, doubled after each failure up to maxDelayMs (defaults 200 and 5000 ms). */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Errors the caller a level up handles itself (e.g. NFC resource errors: back off per host); never retried here. */
  passUp?: ((e: unknown) => boolean) | undefined;
}

/**
 * The attempts at one operation under a policy: `failed(e)` returns, after the backoff, once another
 * attempt may be made, or rethrows `e` when it is not transient or the attempts are spent.
 */
class Attempts {
  /** The attempt under way, 1 for the first. */
  current = 1;
  private delay: number;
  private readonly limit: number;
  constructor(private readonly policy: RetryPolicy, private readonly log: Logger | undefined, private readonly what: string) {
    this.limit = Math.max(1, policy.attempts ?? 4);
    this.delay = policy.baseDelayMs ?? 200;
  }

  async failed(e: unknown): Promise<void> {
    if (this.current >= this.limit || !isTransient(e) || this.policy.passUp?.(e)) throw e;
    this.log?.warn({ attempt: this.current, err: errorMessage(e) }, `${this.what} failed, retrying in ${this.delay} ms`);
    await sleep(this.delay * (0.75 + Math.random() * 0.5));
    this.delay = Math.min(this.policy.maxDelayMs ?? 5000, this.delay * 2);
    this.current++;
  }

  /** The operation made progress: a later failure starts a fresh count. */
  reset(): void {
    this.current = 1;
    this.delay = this.policy.baseDelayMs ?? 200;
  }
}

/**
 * Runs `fn` until it succeeds, fails with an error that is not transient (`isTransient`), or
 * attempts run out. The last error is rethrown as it is; the caller names what failed.
 */
export async function withRetry<T>(fn: (attempt: number) => Promise<T>, policy: RetryPolicy = {}, log?: Logger, what = 'operation'): Promise<T> {
  const a = new Attempts(policy, log, what);
  for (;;) {
    try {
      return await fn(a.current);
    } catch (e) {
      await a.failed(e);
    }
  }
}

/**
 * The error a BlockSource read (or extent query) throws once retries are spent: offset, length and
 * cause in one sentence. Transient when its cause is, so a caller a level up may try again later.
 */
export class SourceReadError extends CodedError {
  readonly offset: number;
  readonly length: number;
  readonly uri: string;
  readonly attempts: number;
  constructor(uri: string, offset: number, length: number, attempts: number, cause: unknown) {
    super('SOURCE_READ', `reading ${length} bytes at offset ${offset} of ${uri} failed${attempts > 1 ? ` after ${attempts} attempts` : ''}: ${errorMessage(cause)}`, {
      cause,
      transient: isTransient(cause),
      fix: `check that ${uri} can still be read: the server or device behind it, the network path to it and its logs`,
    });
    this.offset = offset;
    this.length = length;
    this.uri = uri;
    this.attempts = attempts;
  }
}

/**
 * `inner` with reads and extent queries retried under `policy` while their errors are transient;
 * one that still fails raises a SourceReadError naming the offset, length and attempts. A RangeError
 * (a read outside the disk, or longer than maxReadSize) is the caller's mistake: it passes as it is.
 */
export function retryingSource<S extends BlockSource>(inner: S, policy: RetryPolicy = {}, log?: Logger): S {
  const readError = (offset: number, length: number, attempts: number, e: unknown): Error =>
    e instanceof RangeError ? e : new SourceReadError(inner.uri, offset, length, attempts, e);
  const retried = async <T>(offset: number, length: number, fn: () => Promise<T>): Promise<T> => {
    let attempts = 0;
    try {
      return await withRetry((n) => { attempts = n; return fn(); }, policy, log, `${inner.transport} read at ${offset}`);
    } catch (e) {
      throw readError(offset, length, attempts, e);
    }
  };
  const extents = inner.extents && async function* (offset = 0, length = inner.capacity - offset): AsyncGenerator<SourceExtent> {
    const end = offset + length;
    let pos = offset;
    const a = new Attempts(policy, log, `${inner.transport} extents from ${offset}`);
    for (;;) {
      try {
        // After a failure the query starts again where the extents already handed out end.
        for await (const e of inner.extents!(pos, end - pos)) {
          pos = e.offset + e.length;
          a.reset();
          yield e;
        }
        return;
      } catch (e) {
        await a.failed(e).catch((last: unknown) => { throw readError(pos, end - pos, a.current, last); });
      }
    }
  };
  return wrapSource(inner, {
    read: (offset, length) => retried(offset, length, () => inner.read(offset, length)),
    readInto: inner.readInto && ((offset, target) => retried(offset, target.length, () => inner.readInto!(offset, target))),
    extents,
  });
}
