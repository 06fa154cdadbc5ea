/**
 * How long the sender waits on a silent link before it treats the connection as dead and reconnects
 * (docs/reliability.md, "Link faults", has what each bounds and the times measured). Every limit is
 * on silence, not on the length of a transfer: a slow link that keeps moving never trips one.
 */
export interface LinkTimeouts {
  /** TCP connect and TLS handshake (and an HTTP CONNECT proxy's answer). */
  connectMs: number;
  /** A data connection: READY after HELLO, and ACKs while written data waits for one. */
  ackMs: number;
  /** A control request other than commit: silence between request and the end of the answer. */
  requestMs: number;
  /** The commit request: the receiver re-reads and verifies the image before it answers. */
  commitMs: number;
}

/** The receiver acks at least every 300 ms while data flows and answers control requests in well under a second. */
export const DEFAULT_LINK_TIMEOUTS: Readonly<LinkTimeouts> = { connectMs: 15_000, ackMs: 120_000, requestMs: 120_000, commitMs: 30 * 60_000 };

export function linkTimeouts(t: Partial<LinkTimeouts> | undefined): LinkTimeouts {
  const r = { ...DEFAULT_LINK_TIMEOUTS, ...t };
  for (const [k, v] of Object.entries(r)) {
    if (!(Number.isFinite(v) && v > 0)) throw new RangeError(`link timeout ${k} must be a positive number of ms, got ${v}`);
  }
  return r;
}
