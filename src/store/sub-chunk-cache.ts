/** A sub-chunk (overlay.ts) partly written in memory: its bytes as patched so far. */
export interface CachedSub {
  disk: number;
  slot: number;
  sub: number;
  buf: Buffer;
  /** Patched since last stored. */
  dirty: boolean;
}

/** Bound of the write-back cache of partially written sub-chunks. */
export const CACHE_BYTES = 64 << 20;

/**
 * Write-back cache of partly written sub-chunks, bounded in bytes, least recently used first: a run
 * of small writes into one sub-chunk patches it here, and the writer hashes and stores it once,
 * when it is evicted or at a flush.
 */
export class SubChunkCache {
  private readonly entries = new Map<string, CachedSub>();
  private total = 0;

  constructor(private readonly maxBytes = CACHE_BYTES) {}

  get bytes(): number { return this.total; }
  get size(): number { return this.entries.size; }

  /** The cached sub-chunk, now the most recently used one. */
  get(disk: number, slot: number, sub: number): CachedSub | undefined {
    const key = keyOf(disk, slot, sub);
    const e = this.entries.get(key);
    if (e) {
      this.entries.delete(key); // re-insert: Map order = least recently used first
      this.entries.set(key, e);
    }
    return e;
  }

  add(e: CachedSub): void {
    this.entries.set(keyOf(e.disk, e.slot, e.sub), e);
    this.total += e.buf.length;
  }

  /** Whether any of the first `subs` sub-chunks of `slot` is cached. */
  holdsSlot(disk: number, slot: number, subs: number): boolean {
    if (this.entries.size === 0) return false;
    for (let k = 0; k < subs; k++) if (this.entries.has(keyOf(disk, slot, k))) return true;
    return false;
  }

  /** Forget a sub-chunk (it was written whole), changes and all. */
  drop(disk: number, slot: number, sub: number): void {
    const key = keyOf(disk, slot, sub);
    const e = this.entries.get(key);
    if (e) { this.entries.delete(key); this.total -= e.buf.length; }
  }

  /** Remove and return the least recently used entries while over the bound (the newest one stays). */
  evict(): CachedSub[] {
    const out: CachedSub[] = [];
    while (this.total > this.maxBytes && this.entries.size > 1) {
      const [key, e] = this.entries.entries().next().value as [string, CachedSub];
      this.entries.delete(key);
      this.total -= e.buf.length;
      out.push(e);
    }
    return out;
  }

  /** Entries patched since last stored. */
  dirty(): CachedSub[] { return [...this.entries.values()].filter((e) => e.dirty); }

  clear(): void {
    this.entries.clear();
    this.total = 0;
  }
}

function keyOf(disk: number, slot: number, sub: number): string { return `${disk}:${slot}:${sub}`; }
