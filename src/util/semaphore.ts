/** A counting semaphore: at most `limit` holders at once, waiters served in order. The limit may change while held. */
export class Semaphore {
  private active = 0;
  private readonly waiters: (() => void)[] = [];
  constructor(private max: number) {}

  async acquire(): Promise<() => void> {
    if (this.active >= this.max || this.waiters.length > 0) await new Promise<void>((resolve) => { this.waiters.push(resolve); this.drain(); });
    else this.active++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.active--;
      this.drain();
    };
  }

  /** A lower limit lets no new holder in until enough have released; a higher one wakes waiters at once. */
  setLimit(limit: number): void {
    this.max = Math.max(1, limit);
    this.drain();
  }

  private drain(): void {
    while (this.active < this.max && this.waiters.length > 0) {
      this.active++;
      this.waiters.shift()!();
    }
  }

  get inUse(): number { return this.active; }
  get limit(): number { return this.max; }
}
