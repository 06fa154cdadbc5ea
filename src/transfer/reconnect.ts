/**
 * The sender's rules for getting the receiver back: the delay between attempts, how long the
 * receiver may stay away, and which failures are worth another attempt. No sockets, no timers: the
 * callers sleep and connect.
 */
import { UserError } from '../util/errors.ts';
import { ConnectError } from './connect.ts';
import { RemoteError } from './control-client.ts';
import { FATAL_CODES } from './protocol.ts';

/** Delays of 200 ms doubling up to 5 s; `reset` after a success. */
export class Backoff {
  private delay: number;
  constructor(private readonly first = 200, private readonly max = 5000) { this.delay = first; }
  /** The delay to wait now; the next one doubles. */
  next(): number {
    const d = this.delay;
    this.delay = Math.min(this.delay * 2, this.max);
    return d;
  }
  reset(): void { this.delay = this.first; }
}

/** How long the receiver has been gone, against the time it may be gone. */
export class Outage {
  private since: number | null = null;
  constructor(private readonly limitMs: number, private readonly now: () => number = Date.now) {}
  /** The receiver is gone (again): the clock starts unless it runs already. */
  lost(): void { this.since ??= this.now(); }
  /** It has been gone for longer than the limit. */
  get exceeded(): boolean { return this.since !== null && this.now() - this.since > this.limitMs; }
  ended(): void { this.since = null; }
}

/**
 * What a failed reconnect means: `retry` (the network, the receiver not answering yet, or an
 * unexpected error), `refused-for-now` (the receiver refused with a code that may clear, such as a
 * cycle being committed), `fatal` (no attempt would help: a refusal in FATAL_CODES, or a UserError
 * of our own such as a proxy refusing the credentials).
 */
export function reconnectVerdict(e: unknown): 'retry' | 'refused-for-now' | 'fatal' {
  if (e instanceof ConnectError || !(e instanceof UserError)) return 'retry';
  if (FATAL_CODES.has(e.code) || !(e instanceof RemoteError)) return 'fatal';
  return 'refused-for-now';
}
