/**
 * The figures of `GET /v1/store`: free and total bytes of the data folder's filesystem (statfs, read
 * on every request: cheap) and the store's totals (`ImageStore.stats()`, which lists every image of
 * every source: kept and recomputed only when older than `maxAgeMs` or after the store changed).
 * Requests that arrive while a computation runs share it, so a console polling every few seconds
 * never walks the store each time.
 */
import type { ImageStore, StoreStats } from '../store/types.ts';
import type { StoreFiguresResponse } from '../transfer/contract.ts';
import { freeSpace } from './space.ts';

export const STORE_FIGURES_MAX_AGE_MS = 60_000;

export class StoreFigures {
  private last: { stats: StoreStats; at: number; ms: number } | null = null;
  private computing: Promise<{ stats: StoreStats; at: number; ms: number }> | null = null;
  /** Bumped by `changed()`: a computation that began before a change does not count as fresh. */
  private generation = 0;
  private computedGeneration = -1;

  constructor(private readonly store: ImageStore, private readonly dataDir: string, private readonly maxAgeMs = STORE_FIGURES_MAX_AGE_MS) {}

  /** The store changed (a commit, an image deleted, a gc): the next request recomputes. */
  changed(): void { this.generation++; }

  async get(): Promise<StoreFiguresResponse> {
    const [space, totals] = await Promise.all([freeSpace(this.dataDir), this.totals()]);
    const s = totals.stats;
    return {
      freeBytes: space.free, totalBytes: space.total,
      storedBytes: s.storedBytes, distinctBytes: s.distinctBytes, logicalBytes: s.logicalBytes, dedupRatio: s.dedupRatio,
      chunks: s.chunks, images: s.images, sources: s.sources,
      computedAt: new Date(totals.at).toISOString(), computeMs: totals.ms,
    };
  }

  private async totals(): Promise<{ stats: StoreStats; at: number; ms: number }> {
    const fresh = this.last && this.computedGeneration === this.generation && Date.now() - this.last.at < this.maxAgeMs;
    if (fresh) return this.last!;
    if (!this.computing) {
      const gen = this.generation;
      const started = Date.now();
      this.computing = this.store.stats().then((stats) => {
        this.last = { stats, at: started, ms: Date.now() - started };
        this.computedGeneration = gen;
        return this.last;
      }).finally(() => { this.computing = null; });
    }
    return this.computing;
  }
}
