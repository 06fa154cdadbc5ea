/**
 * The receiver's open cycles: one per source, begun, resumed after a restart, fed by a data
 * connection, committed (the sender's digests checked before the image is published, then retention) or aborted, one
 * control operation per source at a time; store errors become refusals with an HTTP status.
 */
import type { Logger } from '../util/log.ts';
import { UserError, isTransient } from '../util/errors.ts';
import { assertId } from '../util/ids.ts';
import { StoreError, type CycleWriter, type ImageStore } from '../store/types.ts';
import type { HeldRanges, ImageInfo } from '../model/images.ts';
import { sourceDigestMismatch } from './verify-digests.ts';
import { NoSpaceError, asNoSpace, checkRoom } from './space.ts';
import type { AbortCycleRequest, BeginCycleRequest, BeginCycleResponse, CommitCycleRequest } from '../transfer/contract.ts';

/** A refusal sent to the peer: HTTP status, code, message, fix, and `transient` when the peer may try again. */
export class Refusal extends UserError {
  constructor(readonly status: number, code: string, message: string, fix?: string, options?: { cause?: unknown; transient?: boolean }) {
    super(code, message, fix, options);
  }
}

/** The data connection currently feeding a cycle (see data.ts). */
export interface CycleFeed {
  /** Close the connection and resolve once everything it received is written and flushed. */
  detach(): Promise<void>;
}

export class OpenCycle {
  /** streamId → highest sequence number durably written (for exact resume while this process lives). */
  readonly streams = new Map<string, number>();
  feed: CycleFeed | null = null;
  committing = false;
  /** The sender's estimate of the bytes it sends (BeginCycleRequest.estimatedBytes), and the bytes written since: for NO_SPACE's figures. */
  estimatedBytes: number | undefined;
  writtenBytes = 0;
  constructor(readonly sourceId: string, readonly writer: CycleWriter, public maxImages: number | undefined) {}
  get cycleId(): string { return this.writer.cycleId; }
  /** Bytes this cycle still needs: what is left of the estimate, at least `now`. */
  neededBytes(now: number): number {
    return Math.max(now, (this.estimatedBytes ?? 0) - this.writtenBytes);
  }
}

/** Open cycles of every source, and the cycle operations of the control API. */
export class OpenCycles {
  private readonly open = new Map<string, OpenCycle>();
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(readonly store: ImageStore, private readonly log: Logger) {}

  /** One control operation per source at a time. */
  private locked<T>(sourceId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(sourceId) ?? Promise.resolve();
    const p = prev.then(fn, fn);
    this.locks.set(sourceId, p.catch(() => undefined));
    return p;
  }

  get(sourceId: string, cycleId: string): OpenCycle | null {
    const oc = this.open.get(sourceId);
    return oc && oc.cycleId === cycleId ? oc : null;
  }

  /** `req` as checked by requests.ts (parseBeginCycle), as for every operation here. */
  async begin(sourceId: string, req: BeginCycleRequest): Promise<BeginCycleResponse> {
    const { cycleId, disks, maxImages } = req;
    return this.locked(sourceId, async () => {
      let oc = this.open.get(sourceId);
      if (oc && oc.cycleId !== cycleId) {
        throw new Refusal(409, 'CYCLE_OPEN', `source ${sourceId} has cycle ${oc.cycleId} open`, `resume cycle ${oc.cycleId} or abort it first`);
      }
      if (!oc) {
        const others = (await this.store.openCycles(sourceId)).filter((c) => c !== cycleId);
        if (others.length) {
          throw new Refusal(409, 'CYCLE_OPEN', `source ${sourceId} has cycle ${others[0]} open`, `resume cycle ${others[0]} or abort it first`);
        }
        const opts: Parameters<ImageStore['beginCycle']>[0] = { sourceId, cycleId, disks };
        if (req.baseImageId !== undefined) opts.baseImageId = req.baseImageId;
        if (req.baseDisks !== undefined) opts.baseDisks = req.baseDisks;
        const resuming = (await this.store.openCycles(sourceId)).includes(cycleId);
        // a new cycle is refused before anything is created; a resumed one once its held bytes are known
        if (!resuming && req.estimatedBytes !== undefined) await this.checkRoom(sourceId, cycleId, req.estimatedBytes, 'refused before it began');
        const writer = await this.store.beginCycle(opts).catch((e: unknown) => { throw asNoSpace(e, this.store.root, 1 << 20, `cycle ${cycleId} of source ${sourceId} cannot begin`); });
        oc = new OpenCycle(sourceId, writer, maxImages);
        this.open.set(sourceId, oc);
        this.log.info({ sourceId, cycleId, baseImageId: writer.baseImageId, estimatedBytes: req.estimatedBytes }, 'cycle begun');
      } else {
        const same = oc.writer.disks.length === disks.length && oc.writer.disks.every((d, i) => d.capacity === disks[i]!.capacity);
        if (!same) throw new Refusal(409, 'BAD_REQUEST', `cycle ${cycleId} was begun with other disks`, 'resume with the same disks, or abort the cycle');
        if (maxImages !== undefined) oc.maxImages = maxImages;
        // What a stopped connection wrote but could not flush (a full disk, since freed) becomes held now, not sent again.
        if (!oc.feed) await oc.writer.flush().catch((e: unknown) => { throw asNoSpace(e, this.store.root, oc!.neededBytes(1 << 20), `cycle ${cycleId} of source ${sourceId} cannot resume`); });
      }
      const held = await oc.writer.held();
      if (req.estimatedBytes !== undefined) {
        const heldBytes = held.reduce((n, h) => n + h.ranges.reduce((m, r) => m + r.length, 0), 0);
        oc.estimatedBytes = req.estimatedBytes;
        oc.writtenBytes = heldBytes;
        await this.checkRoom(sourceId, cycleId, oc.neededBytes(0), heldBytes > 0 ? `refused to resume (${heldBytes} bytes held)` : 'refused before it began');
      }
      const answer: BeginCycleResponse = { cycleId, baseImageId: oc.writer.baseImageId, held };
      if (oc.writer.baseDisks) answer.baseDisks = [...oc.writer.baseDisks];
      return answer;
    });
  }

  private async checkRoom(sourceId: string, cycleId: string, needed: number, refused: string): Promise<void> {
    try {
      await checkRoom(this.store.root, needed, `cycle ${cycleId} of source ${sourceId} ${refused}`);
    } catch (e) {
      if (e instanceof NoSpaceError) this.log.warn({ sourceId, cycleId, freeBytes: e.freeBytes, neededBytes: e.neededBytes }, 'cycle refused: no space for its estimate');
      throw e;
    }
  }

  async held(sourceId: string, cycleId: string): Promise<HeldRanges[]> {
    const oc = this.get(sourceId, cycleId);
    if (!oc) throw notOpen(sourceId, cycleId);
    return oc.writer.held();
  }

  async commit(sourceId: string, cycleId: string, req: CommitCycleRequest): Promise<ImageInfo> {
    assertId(cycleId, 'cycle id');
    return this.locked(sourceId, async () => {
      const oc = this.get(sourceId, cycleId);
      if (!oc) {
        // A commit retried after the receiver died between publishing the image and answering (or
        // applying retention): the image stands; answer with it and keep the source's retention.
        const done = (await this.store.listSources()).includes(sourceId)
          ? (await this.store.listImages(sourceId)).find((i) => i.cycleId === cycleId) : undefined;
        if (!done || (await this.store.openCycles(sourceId)).includes(cycleId)) throw notOpen(sourceId, cycleId);
        if (req.maxImages !== undefined) {
          const removed = await this.store.applyRetention(sourceId, req.maxImages);
          if (removed.length) this.log.info({ sourceId, removed, keep: req.maxImages }, 'retention removed images');
        }
        this.log.info({ sourceId, cycleId, imageId: done.imageId }, 'commit of a cycle already committed answered with its image');
        return done;
      }
      oc.committing = true;
      try {
        if (oc.feed) await oc.feed.detach();
        const commitOpts: Parameters<CycleWriter['commit']>[0] = { meta: req.meta ?? {} };
        if (req.expected) commitOpts.expected = req.expected;
        const digests = req.sourceDigests;
        // Checked on the staged image, before anything is published: a crash meanwhile leaves the cycle open, never an unchecked image.
        if (req.verify && digests) {
          commitOpts.verify = async (staged) => {
            const bad = await sourceDigestMismatch(staged, digests);
            if (bad) {
              throw new Refusal(422, 'CHECKSUM_MISMATCH', `cycle ${cycleId} does not match the source digests: ${bad}; nothing was published`,
                'abort the cycle and run it again (vmlift senders abort it by themselves); if it happens again, check the source disk and the receiver storage');
            }
          };
        }
        let img: ImageInfo;
        try {
          img = await oc.writer.commit(commitOpts);
        } catch (e) {
          if (e instanceof StoreError && e.code === 'MISSING_EXTENTS') {
            this.log.warn({ sourceId, cycleId, reason: e.message }, 'commit refused: missing extents');
            throw new Refusal(409, 'MISSING_EXTENTS', `commit of cycle ${cycleId} refused: ${e.message}`, 'resume the cycle and send the missing extents, then commit again');
          }
          if (e instanceof Refusal && e.code === 'CHECKSUM_MISMATCH') this.log.warn({ sourceId, cycleId, reason: e.message }, 'commit refused: checksum mismatch; nothing published, the cycle stays open');
          const full = asNoSpace(e, this.store.root, oc.neededBytes(1 << 20), `commit of cycle ${cycleId} of source ${sourceId} stopped; nothing was published, the cycle stays open`);
          if (full instanceof NoSpaceError) this.log.warn({ sourceId, cycleId, freeBytes: full.freeBytes, neededBytes: full.neededBytes }, 'commit stopped: no space');
          throw full;
        }
        this.open.delete(sourceId);
        const keep = req.maxImages ?? oc.maxImages;
        if (keep !== undefined) {
          const removed = await this.store.applyRetention(sourceId, keep);
          if (removed.length) this.log.info({ sourceId, removed, keep }, 'retention removed images');
        }
        this.log.info({ sourceId, cycleId, imageId: img.imageId }, 'cycle committed');
        return img;
      } finally {
        oc.committing = false;
      }
    });
  }

  async abort(sourceId: string, cycleId: string, req: AbortCycleRequest): Promise<void> {
    assertId(cycleId, 'cycle id');
    return this.locked(sourceId, async () => {
      let oc = this.get(sourceId, cycleId);
      if (!oc) {
        // after a receiver restart the cycle is only on disk: reopen it to drop it
        if (!(await this.store.openCycles(sourceId)).includes(cycleId)) throw notOpen(sourceId, cycleId);
        if (!req.disks) throw disksRequired();
        const writer = await this.store.beginCycle({ sourceId, cycleId, disks: req.disks });
        oc = new OpenCycle(sourceId, writer, undefined);
      }
      if (oc.feed) await oc.feed.detach();
      await oc.writer.abort();
      if (this.open.get(sourceId) === oc) this.open.delete(sourceId);
      this.log.info({ sourceId, cycleId }, 'cycle aborted');
    });
  }

  /** Drop every data connection (shutdown). */
  async detachAll(): Promise<void> {
    await Promise.all([...this.open.values()].map((oc) => oc.feed?.detach()));
  }
}

export function notOpen(sourceId: string, cycleId: string): Refusal {
  return new Refusal(404, 'CYCLE_NOT_OPEN', `cycle ${cycleId} of source ${sourceId} is not open`, 'begin (or resume) the cycle first');
}

export function disksRequired(): Refusal {
  return new Refusal(400, 'BAD_REQUEST', 'disks must be a list of 1..256 disks', 'describe every disk of the source');
}

export function refusalFrom(e: unknown): Refusal | null {
  if (e instanceof Refusal) return e;
  if (e instanceof NoSpaceError) return new Refusal(507, e.code, e.message, e.fix, { cause: e });
  if (e instanceof UserError) return new Refusal(400, e.code, e.message, e.fix, { cause: e, transient: isTransient(e) });
  if (e instanceof StoreError) {
    const status = e.code === 'NOT_FOUND' ? 404 : e.code === 'CYCLE_BUSY' || e.code === 'CYCLE_MISMATCH' || e.code === 'CYCLE_CLOSED' ? 409 : 400;
    return new Refusal(status, e.code, e.message, e.fix, { cause: e, transient: isTransient(e) });
  }
  return null;
}
