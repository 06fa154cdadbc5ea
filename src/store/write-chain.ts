/**
 * Ordering of overlapping writes: work queued under one key (a chunk of a disk) runs after the work
 * queued before it under that key has settled, failed or not, so overlapping writes apply in call
 * order; work under other keys runs meanwhile. Work can also be tracked, so that a flush or a close
 * can wait until everything started so far has settled.
 */
export class WriteChain {
  private readonly tails = new Map<string, Promise<void>>();
  private readonly inflight = new Set<Promise<void>>();

  /** Queue `fn` behind earlier work under `key`; it starts at once (synchronously) when there is none. */
  run(key: string, fn: () => Promise<void>): Promise<void> {
    const prev = this.tails.get(key);
    const p = prev ? prev.then(fn, fn) : fn();
    this.tails.set(key, p);
    const drop = () => { if (this.tails.get(key) === p) this.tails.delete(key); };
    p.then(drop, drop);
    return p;
  }

  track(p: Promise<unknown>): void {
    const t = p.then(() => {}, () => {});
    this.inflight.add(t);
    void t.then(() => this.inflight.delete(t));
  }

  /** Settles when all work tracked until now has settled. */
  async settled(): Promise<void> {
    await Promise.all([...this.inflight]);
  }
}
