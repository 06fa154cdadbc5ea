import type { BlockSource } from '../source/types.ts';
import { wrapSource } from '../source/wrap.ts';
import type { DiskOpener, SnapshotDisk, SnapshotHandle } from './services.ts';
import { Semaphore } from '../util/semaphore.ts';


/**
 * Bounds the disks open at once per ESXi host (VMware's NFC connection limits) and overall.
 * Wraps a DiskOpener: a slot is held from open() until the source is closed.
 */
export class LimitedDiskOpener implements DiskOpener {
  private readonly perHost = new Map<string, Semaphore>();
  private readonly overall: Semaphore;

  constructor(
    private readonly inner: DiskOpener,
    private readonly hostOf: (vmRef: string) => Promise<string>,
    private readonly limits: { perHost: number; overall: number },
  ) {
    this.overall = new Semaphore(limits.overall);
  }

  async open(vmRef: string, snapshot: SnapshotHandle, disk: SnapshotDisk): Promise<BlockSource> {
    const host = await this.hostOf(vmRef);
    let sem = this.perHost.get(host);
    if (!sem) this.perHost.set(host, (sem = new Semaphore(this.limits.perHost)));
    const releaseHost = await sem.acquire();
    const releaseAll = await this.overall.acquire();
    const release = () => { releaseAll(); releaseHost(); };
    let source: BlockSource;
    try {
      source = await this.inner.open(vmRef, snapshot, disk);
    } catch (e) {
      release();
      throw e;
    }
    return releasedOnClose(source, release);
  }

  /** Disks open now, per host. */
  usage(): Record<string, number> {
    return Object.fromEntries([...this.perHost].map(([h, s]) => [h, s.inUse]));
  }
}

/** `source`, calling `release` once it is closed (whether or not its own close succeeds). */
export function releasedOnClose<S extends BlockSource>(source: S, release: () => void): S {
  return wrapSource(source, { close: async () => { try { await source.close(); } finally { release(); } } });
}
