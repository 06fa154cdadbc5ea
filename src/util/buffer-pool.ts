/**
 * Reusable ArrayBuffers of one size (each the whole of its own memory, so it can be transferred to
 * a worker thread and back). Fresh buffers for every piece cost page faults and leave garbage that
 * the allocator holds on to; reused ones stay resident at a fixed count.
 */
export class BufferPool {
  private readonly free: ArrayBuffer[] = [];
  private made = 0;

  /** `keep`: idle buffers kept at most (more are left to the garbage collector). */
  constructor(readonly size: number, private readonly keep: number) {}

  take(): ArrayBuffer {
    const b = this.free.pop();
    if (b) return b;
    this.made++;
    return Buffer.allocUnsafeSlow(this.size).buffer as ArrayBuffer;
  }

  /** A buffer of `take` back (after a round trip through a worker: the object that came back). */
  give(b: ArrayBuffer): void {
    if (b.byteLength !== this.size) throw new RangeError(`buffer of ${b.byteLength} bytes given to a pool of ${this.size}-byte buffers`);
    if (this.free.length < this.keep) this.free.push(b);
    else this.made--;
  }

  /** A buffer of `take` that will not come back (it went to a worker that failed). */
  lost(): void { this.made--; }

  /** Buffers taken and neither given back nor lost. */
  get outstanding(): number { return this.made - this.free.length; }
  get idle(): number { return this.free.length; }
}
