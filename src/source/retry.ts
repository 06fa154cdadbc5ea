import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../util/log.ts';

export interface RetryPolicy {
  /** Attempts in all, first one included (default 4). */
  attempts?: number;
  /** First wait, doubled after each failure up to maxDelayMs (defaults 200 and 5000 ms). */
  baseDelayMs?: number;
  maxDelayMs?: number;
}

/**
 * Runs `fn` until it succeeds, `isTransient` says an error is final, or attempts run out.
 * The last error is rethrown as it is; the caller names offset and cause.
 */
export async function withRetry<T>(fn: (attempt: number) => Promise<T>, isTransient: (e: unknown) => boolean,
  policy: RetryPolicy = {}, log?: Logger, what = 'operation'): Promise<T> {
  const attempts = Math.max(1, policy.attempts ?? 4);
  let delay = policy.baseDelayMs ?? 200;
  const max = policy.maxDelayMs ?? 5000;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (e) {
      if (attempt >= attempts || !isTransient(e)) throw e;
      log?.warn({ attempt, err: e instanceof Error ? e.message : String(e) }, `${what} failed, retrying in ${delay} ms`);
      await sleep(delay * (0.75 + Math.random() * 0.5));
      delay = Math.min(max, delay * 2);
    }
  }
}

/** The error a BlockSource read throws once retries are spent: offset, length and cause in one sentence. */
export class SourceReadError extends Error {
  readonly offset: number;
  readonly length: number;
  readonly uri: string;
  constructor(uri: string, offset: number, length: number, attempts: number, cause: unknown) {
    super(`reading ${length} bytes at offset ${offset} of ${uri} failed${attempts > 1 ? ` after ${attempts} attempts` : ''}: ` +
      `${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    this.name = 'SourceReadError';
    this.offset = offset;
    this.length = length;
    this.uri = uri;
  }
}
