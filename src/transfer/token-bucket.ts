/**
 * Token bucket on wire bytes. Rate in Mbps (10^6 bits/s); 0 = unlimited. The rate can change
 * while transfers wait. A take larger than the burst is allowed by going into debt, so big frames
 * never deadlock; the long-run rate still holds.
 */
export class TokenBucket {
  private bytesPerSec = 0;
  private tokens = 0;
  private last = performance.now();
  private chain: Promise<void> = Promise.resolve();

  constructor(mbps: number) { this.setRate(mbps); }

  setRate(mbps: number): void {
    if (!Number.isFinite(mbps) || mbps < 0) throw new RangeError(`bandwidth ${mbps} Mbps must be a number >= 0`);
    this.refill();
    this.bytesPerSec = (mbps * 1e6) / 8;
    this.tokens = Math.min(this.tokens, this.burst());
  }

  get mbps(): number { return (this.bytesPerSec * 8) / 1e6; }

  /**
   * A quarter second of credit: timers fire late on a loaded machine, and the credit that accrued
   * meanwhile must not be lost, or the rate falls short of the limit.
   */
  private burst(): number { return Math.max(256 * 1024, this.bytesPerSec / 4); }

  private refill(): void {
    const now = performance.now();
    if (this.bytesPerSec > 0) this.tokens = Math.min(this.burst(), this.tokens + ((now - this.last) / 1000) * this.bytesPerSec);
    this.last = now;
  }

  /** Resolves when `bytes` may be sent. Callers are served in order. */
  take(bytes: number): Promise<void> {
    const p = this.chain.then(async () => {
      for (;;) {
        if (this.bytesPerSec === 0) return;
        this.refill();
        if (this.tokens >= 0) { this.tokens -= bytes; return; }
        const waitMs = Math.min(200, (-this.tokens / this.bytesPerSec) * 1000);
        await new Promise((r) => setTimeout(r, Math.max(1, waitMs)));
      }
    });
    this.chain = p;
    return p;
  }
}
