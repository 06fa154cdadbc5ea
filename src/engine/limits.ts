import type { Logger } from 'pino';
import type { BlockSource } from '../source/types.ts';
import { wrapSource } from '../source/wrap.ts';
import type { DiskOpenContext, DiskOpener, SnapshotDisk, SnapshotHandle } from './services.ts';
import { Semaphore } from '../util/semaphore.ts';
import { silentLogger } from '../util/log.ts';
import { shrinkingOnNfc } from './nfc-read-size.ts';

/** The code the VDDK reader gives NFC's resource errors ("NFC error … failed to allocate", connection limits). */
export const NFC_RESOURCE_CODE = 'VDDK_NFC_RESOURCE';

export interface NfcBackoffPolicy {
  /** First wait after an NFC resource error; doubles per consecutive error of one read, up to maxBackoffMs. */
  backoffMs: number;
  maxBackoffMs: number;
  /** A host's lowered limit goes up by one after this long without an NFC resource error there. */
  recoveryMs: number;
  /** Times one read or open is tried again after NFC resource errors before its error goes up. */
  maxRetries: number;
}

export const DEFAULT_NFC_BACKOFF: NfcBackoffPolicy = { backoffMs: 1_000, maxBackoffMs: 30_000, recoveryMs: 5 * 60_000, maxRetries: 8 };

/** Whether `e` (or an error along its cause chain) carries NFC's resource-error code. */
export function isNfcResourceError(e: unknown): boolean {
  for (let c: unknown = e, depth = 0; c && typeof c === 'object' && depth < 10; c = (c as { cause?: unknown }).cause, depth++) {
    if ((c as { code?: unknown }).code === NFC_RESOURCE_CODE) return true;
  }
  return false;
}

interface HostSlots { sem: Semaphore; lastNfcError: number; timer?: NodeJS.Timeout }

/**
 * Bounds the disks open at once per ESXi host (VMware's NFC connection limits) and overall.
 * Wraps a DiskOpener: a slot is held from open() until the source is closed. An NFC resource error
 * (ESXi's NFC memory budget is per host) lowers that host's limit to one below the disks it has open,
 * waits and tries the read (or open) again; the limit climbs back one step per `recoveryMs` of quiet.
 * Such an error of a read also halves that disk's read size (`shrinkingOnNfc`): ESXi refuses a read
 * longer than its NFC buffers with the same error.
 */
export class LimitedDiskOpener implements DiskOpener {
  private readonly perHost = new Map<string, HostSlots>();
  private readonly overall: Semaphore;
  private readonly nfc: NfcBackoffPolicy;
  private readonly log: Logger;

  constructor(
    private readonly inner: DiskOpener,
    private readonly hostOf: (vmRef: string) => Promise<string>,
    private readonly limits: { perHost: number; overall: number },
    o: { nfc?: Partial<NfcBackoffPolicy>; logger?: Logger } = {},
  ) {
    this.overall = new Semaphore(limits.overall);
    this.nfc = { ...DEFAULT_NFC_BACKOFF, ...o.nfc };
    this.log = o.logger ?? silentLogger;
  }

  async open(vmRef: string, snapshot: SnapshotHandle, disk: SnapshotDisk, ctx?: DiskOpenContext): Promise<BlockSource> {
    const host = await this.hostOf(vmRef);
    const slots = this.slots(host);
    for (let attempt = 1; ; attempt++) {
      const releaseHost = await slots.sem.acquire();
      const releaseAll = await this.overall.acquire();
      const release = () => { releaseAll(); releaseHost(); };
      let source: BlockSource;
      try {
        source = await this.inner.open(vmRef, snapshot, disk, ctx);
      } catch (e) {
        release();
        if (!isNfcResourceError(e) || attempt > this.nfc.maxRetries) throw e;
        await this.backOff(host, e, attempt, { vmRef, diskKey: disk.key, during: 'open' });
        continue;
      }
      const where = { vmRef, diskKey: disk.key };
      return this.nfcRetrying(releasedOnClose(shrinkingOnNfc(source, isNfcResourceError, this.log, { host, ...where }), release), host, where);
    }
  }

  /** Disks open now, per host. */
  usage(): Record<string, number> {
    return Object.fromEntries([...this.perHost].map(([h, s]) => [h, s.sem.inUse]));
  }

  /** The concurrent-disk limit of each host now (lower than configured after NFC resource errors). */
  hostLimits(): Record<string, number> {
    return Object.fromEntries([...this.perHost].map(([h, s]) => [h, s.sem.limit]));
  }

  /** Stops the recovery timers (connector shutdown). */
  close(): void {
    for (const s of this.perHost.values()) if (s.timer) clearTimeout(s.timer);
  }

  private slots(host: string): HostSlots {
    let s = this.perHost.get(host);
    if (!s) this.perHost.set(host, (s = { sem: new Semaphore(this.limits.perHost), lastNfcError: 0 }));
    return s;
  }

  private nfcRetrying(source: BlockSource, host: string, where: { vmRef: string; diskKey: number }): BlockSource {
    const retry = async <T>(during: string, fn: () => Promise<T>): Promise<T> => {
      for (let attempt = 1; ; attempt++) {
        try {
          return await fn();
        } catch (e) {
          if (!isNfcResourceError(e) || attempt > this.nfc.maxRetries) throw e;
          await this.backOff(host, e, attempt, { ...where, during });
        }
      }
    };
    return wrapSource(source, {
      read: (offset, length) => retry(`read at ${offset}`, () => source.read(offset, length)),
      readInto: source.readInto ? (offset, target) => retry(`read at ${offset}`, () => source.readInto!(offset, target)) : undefined,
    });
  }

  private async backOff(host: string, e: unknown, attempt: number, where: Record<string, unknown>): Promise<void> {
    const s = this.slots(host);
    const before = s.sem.limit;
    s.sem.setLimit(Math.max(1, Math.min(before, s.sem.inUse) - 1));
    s.lastNfcError = Date.now();
    this.scheduleRecovery(host, s);
    const waitMs = Math.min(this.nfc.maxBackoffMs, this.nfc.backoffMs * 2 ** (attempt - 1));
    this.log.warn({ host, ...where, attempt, limitBefore: before, limit: s.sem.limit, waitMs, err: (e as Error).message },
      'NFC resource error: lowered the host\'s concurrent-disk limit, backing off');
    await new Promise((r) => setTimeout(r, waitMs));
  }

  private scheduleRecovery(host: string, s: HostSlots): void {
    if (s.timer) clearTimeout(s.timer);
    if (s.sem.limit >= this.limits.perHost) return;
    s.timer = setTimeout(() => {
      s.timer = undefined;
      if (Date.now() - s.lastNfcError < this.nfc.recoveryMs) { this.scheduleRecovery(host, s); return; }
      s.sem.setLimit(s.sem.limit + 1);
      this.log.info({ host, limit: s.sem.limit, configured: this.limits.perHost }, 'no NFC resource error for a while: raised the host\'s concurrent-disk limit');
      this.scheduleRecovery(host, s);
    }, Math.max(1, this.nfc.recoveryMs - (Date.now() - s.lastNfcError)));
    s.timer.unref();
  }
}

/** `source`, calling `release` once it is closed (whether or not its own close succeeds). */
export function releasedOnClose<S extends BlockSource>(source: S, release: () => void): S {
  return wrapSource(source, { close: async () => { try { await source.close(); } finally { release(); } } });
}
