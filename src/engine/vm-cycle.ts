/**
 * One agentless sync cycle of a VM, the steps of docs/design.md: sweep, snapshot, read each disk's
 * changeId, plan (sync-plan.ts), QueryChangedDiskAreas, copy the changed areas from the snapshot to
 * the receiver (bounded reads in flight, clamped read size), commit, remove the snapshot. A failure
 * is a CycleError naming its step.
 */
import type { Logger } from 'pino';
import PQueue from 'p-queue';
import type { BlockSource } from '../source/types.ts';
import { clampReads } from '../source/clamp.ts';
import type { ImageInfo } from '../model/images.ts';
import { planDiskSync, requireChangeIds, type SyncPlan } from './sync-plan.ts';
import { baseDiskMapping, diskListChange, identityOf, positionalMapping, recordedIdentities } from './disk-identity.ts';
import { namingDisk } from './disk-read-error.ts';
import { coalesce, split, subtract, totalLength, type Range } from '../model/ranges.ts';
import type { DiskOpener, DiskTransportChoice, ReceiverService, SnapshotDisk, SnapshotHandle, VCenterService } from './services.ts';
import type { ReceiverCycle } from '../transfer/contract.ts';
import { DigestTree, pieceDigests } from '../transfer/digest-tree.ts';
import { PIECE_SIZE } from '../transfer/protocol.ts';
import type { DiskSelection, JobSettings } from '../state/types.ts';
import { selectDisks } from './names.ts';
import { CodedError, errorReport, isTransient } from '../util/errors.ts';
import { crashPoint } from '../util/crash.ts';

export const SNAPSHOT_PREFIX = 'vmlift-';
/**
 * Reads in flight per disk: at most MAX_READ_BYTES_IN_FLIGHT of buffers (4 reads of 2 MiB), and at
 * most MAX_READS_IN_FLIGHT reads (small changed areas of an incremental cycle: 64 KiB CBT blocks,
 * where the source's latency, not its bandwidth, is what limits).
 */
export const MAX_READ_BYTES_IN_FLIGHT = 8 << 20;
export const MAX_READS_IN_FLIGHT = 16;

export interface DiskProgress {
  diskKey: number;
  label: string;
  /** Bytes of changed areas to move this cycle. */
  total: number;
  done: number;
  /** The transport the disk is read through this cycle, and why; set once the disk is open. */
  transport?: string;
  transportReason?: string;
}

export interface CycleInput {
  jobId: string;
  cycleId: string;
  vmRef: string;
  settings: JobSettings;
  /** changeId recorded per disk key by the last committed cycle. */
  previousChangeIds: Map<number, string | null>;
  /** Receiver image the previous cycle committed (null before the first). */
  previousImageId: string | null;
  /** The cycle started before a restart: its snapshot may still be there (see runVmCycle). */
  resumed?: boolean;
  /** No retry follows a failure of this attempt (the job then fails the cycle id), transient or not. */
  lastAttempt?: boolean;
  /** Force a full cycle (e.g. first cycle) with this reason. */
  forceFull?: string;
  /** The job's disk selection: the other disks are never opened or read, and the image holds only these. */
  diskSelection?: DiskSelection | null;
  vcenter: VCenterService;
  disks: DiskOpener;
  receiver: ReceiverService;
  logger: Logger;
  signal?: AbortSignal;
  /** Largest single read (VMware NFC: 2 MiB through vCenter). */
  maxReadSize?: number;
  onStep?: (step: CycleStep) => void;
  /** Percent done of the vCenter task the step waits for (snapshot create, removal). */
  onTaskProgress?: (percent: number) => void;
  onProgress?: (p: DiskProgress[]) => void;
  /** Called once the snapshot exists, so a caller can record it before anything can crash. */
  onSnapshot?: (s: SnapshotHandle) => void;
}

export type CycleStep = 'preflight' | 'cbt' | 'sweep' | 'snapshot' | 'plan' | 'transfer' | 'commit' | 'cleanup';

export interface DiskResult {
  key: number;
  label: string;
  capacity: number;
  plan: SyncPlan;
  changeId: string | null;
  /** Bytes of areas CBT reported (after what the receiver already held). */
  areaBytes: number;
  sourceBytesRead: number;
  /** The transport the disk was read through, and why (absent when nothing was read). */
  transport?: string;
  transportReason?: string;
}

export interface CycleResult {
  image: ImageInfo;
  kind: 'full' | 'incremental';
  disks: DiskResult[];
  wireBytes: number;
  resentBytes: number;
  snapshot: SnapshotHandle;
  durationMs: number;
  /** Wall time from the first disk's first read to the last disk's flush (moving data, not the cycle's fixed steps). */
  dataMs: number;
}

/** An error in a named step of the cycle: the job shows it as its failing step, with its cause's code and fix. */
export class CycleError extends CodedError {
  readonly step: CycleStep;
  constructor(step: CycleStep, cause: unknown) {
    const why = errorReport(cause);
    super(why.code, `${step}: ${why.message}`, { fix: why.fix, transient: isTransient(cause), cause });
    this.step = step;
  }
}

async function step<T>(name: CycleStep, input: CycleInput, fn: () => Promise<T>): Promise<T> {
  input.signal?.throwIfAborted();
  input.onStep?.(name);
  const t0 = performance.now();
  try {
    const r = await fn();
    input.logger.debug({ step: name, ms: Math.round(performance.now() - t0) }, 'cycle step done');
    return r;
  } catch (e) {
    if (e instanceof CycleError) throw e;
    throw new CycleError(name, e);
  }
}

/**
 * One agentless sync cycle (docs/design.md steps 1–7). The snapshot is always removed, whether the
 * cycle succeeds or fails; the caller records new changeIds only from a returned result.
 */
export async function runVmCycle(input: CycleInput): Promise<CycleResult> {
  const started = Date.now();
  const { vcenter, vmRef, logger } = input;
  const name = `${SNAPSHOT_PREFIX}${input.cycleId}`;
  // A cycle resumed after a crash reads the snapshot it started on when it is still there: what the
  // receiver already holds of the cycle came from it, and a new snapshot would mix two points in time.
  const kept = input.resumed && vcenter.findSnapshot ? await step('sweep', input, () => vcenter.findSnapshot!(vmRef, name)) : null;
  await step('sweep', input, async () => {
    const n = await vcenter.sweepSnapshots(vmRef, SNAPSHOT_PREFIX, kept ? name : undefined);
    if (n > 0) logger.warn({ vmRef, removed: n }, 'removed leftover vmlift snapshots');
  });
  if (kept) logger.info({ vmRef, snapshot: name }, 'resuming the cycle on its own snapshot');
  const snapshot = kept ?? await step('snapshot', input, () =>
    vcenter.createSnapshot(vmRef, name, { quiesce: input.settings.quiesce, onProgress: input.onTaskProgress }));
  crashPoint('vc:snapshot-created');
  input.onSnapshot?.(snapshot);
  let session: ReceiverCycle | undefined;
  try {
    const result = await transferAndCommit(input, snapshot, kept !== null, (s) => { session = s; });
    return { ...result, snapshot, durationMs: Date.now() - started };
  } catch (e) {
    // The receiver keeps an open cycle for resume unless the user paused/deleted; a failed cycle is resumed by its retry.
    if (input.signal?.aborted && session) logger.info({ cycleId: input.cycleId }, 'cycle paused; receiver keeps what it holds');
    // A failure no retry can clear, or the last attempt's, ends this cycle id (the job fails it): close it on the
    // receiver, or the next cycle (`job resume`) is refused as CYCLE_OPEN.
    else if (session && (!isTransient(e) || input.lastAttempt)) await (session as ReceiverCycle).abort().catch(() => undefined);
    throw e;
  } finally {
    await step('cleanup', { ...input, signal: undefined }, () => removeCycleSnapshot(input, snapshot))
      .catch((e) => logger.error({ vmRef, snapshot: snapshot.name, err: (e as Error).message }, 'could not remove the cycle snapshot; the next cycle sweeps it'));
  }
}

/**
 * Waits before each further attempt at removing the cycle's snapshot after a transient failure (a
 * dropped, reset or stalled vCenter connection): a snapshot left until the next cycle, up to an
 * interval later, keeps growing its delta on the datastore.
 */
const CLEANUP_RETRY_DELAYS_MS = [1000, 2000, 4000, 8000];

async function removeCycleSnapshot(input: CycleInput, snapshot: SnapshotHandle): Promise<void> {
  const { vcenter, vmRef, logger } = input;
  for (let i = 0; ; i++) {
    try {
      await vcenter.removeSnapshot(vmRef, snapshot, { onProgress: input.onTaskProgress });
      return;
    } catch (e) {
      if (!isTransient(e) || i >= CLEANUP_RETRY_DELAYS_MS.length) throw e;
      logger.warn({ vmRef, snapshot: snapshot.name, attempt: i + 1, err: (e as Error).message }, 'removing the cycle snapshot failed; retrying');
      await new Promise((r) => setTimeout(r, CLEANUP_RETRY_DELAYS_MS[i]));
      // the failed call may have removed it after all (only its answer was lost)
      if (vcenter.findSnapshot && (await vcenter.findSnapshot(vmRef, snapshot.name).catch(() => snapshot)) === null) return;
    }
  }
}

async function transferAndCommit(input: CycleInput, snapshot: SnapshotHandle, ownSnapshot: boolean, onSession: (s: ReceiverCycle) => void):
  Promise<Omit<CycleResult, 'snapshot' | 'durationMs'>> {
  let dataStart = Infinity; let dataEnd = -Infinity;
  const { vcenter, vmRef, receiver, logger, settings } = input;
  const { disks, excluded } = await step('plan', input, async () => {
    const all = [...await vcenter.snapshotDisks(vmRef, snapshot)].sort((a, b) => a.key - b.key);
    const ds = selectDisks(all, input.diskSelection ?? null, vmRef);
    requireChangeIds(vmRef, input.jobId, ds);
    return { disks: ds, excluded: all.filter((d) => !ds.includes(d)).map((d) => d.key) };
  });
  if (excluded.length) logger.info({ vmRef, excluded }, 'disks left out by the job\'s disk selection: not read');
  const images = await step('plan', input, () => receiver.listImages());
  const base = input.previousImageId === null ? undefined : images.find((i) => i.imageId === input.previousImageId);
  // Each disk builds on the base image's disk with the same identity (key + backing UUID), never on
  // the one at the same position: a kept disk that moved keeps its own base and changeId; a new disk
  // (or another disk under a known key) starts empty and is read in full.
  const identities = disks.map(identityOf);
  const recorded = base ? recordedIdentities(base) : null;
  const disksChanged = base ? diskListChange(recorded, identities, base.disks.length) : null;
  const baseDisks = base ? baseDiskMapping(recorded, identities, base.disks.length) : disks.map(() => null);
  const baseOnReceiver = base !== undefined && baseDisks.some((b) => b !== null);
  if (disksChanged) logger.info({ vmRef, baseImageId: base!.imageId, reason: disksChanged, baseDisks }, 'the disks changed since the previous image; each kept disk builds on its own base');
  const plans = disks.map((d, i) => input.forceFull
    ? { mode: 'full', reason: input.forceFull } as SyncPlan
    : base && baseDisks[i] === null ? { mode: 'full', reason: `new disk, not in image ${base.imageId} (${disksChanged ?? 'no disk matched'})` } as SyncPlan
      : planDiskSync(input.previousChangeIds.get(d.key) ?? null, d.changeId, baseOnReceiver));
  // One image holds every disk: if any disk needs a full read, the image still builds on the base
  // (unchanged disks keep their content); only a missing base forces building from empty disks.
  const anyFull = plans.some((p) => p.mode === 'full');
  for (const [i, p] of plans.entries()) {
    if (p.mode === 'full') logger.info({ vmRef, disk: disks[i]!.key, reason: p.reason }, 'full sync of disk');
  }

  const areas = await step('plan', input, () => Promise.all(disks.map((d, i) => {
    const p = plans[i]!;
    return vcenter.changedAreas(vmRef, snapshot, d, p.mode === 'full' ? '*' : p.sinceChangeId).then((a) => { crashPoint('engine:changed-areas'); return a; });
  })));

  const session = await step('transfer', input, () => receiver.beginCycle({
    cycleId: input.cycleId,
    disks: disks.map((d, i) => ({ disk: i, capacity: d.capacity, label: d.label })),
    baseImageId: baseOnReceiver ? input.previousImageId : null,
    ...(baseOnReceiver ? { baseDisks } : {}),
    maxImages: settings.maxImages,
    estimatedBytes: areas.reduce((n, a) => n + totalLength(a), 0),
  }));
  onSession(session);
  if (baseOnReceiver) {
    // A receiver that predates per-disk bases ignores baseDisks and builds by position.
    const applied = session.baseDisks ?? positionalMapping(disks.length, base!.disks.length);
    if (JSON.stringify(applied) !== JSON.stringify(baseDisks)) {
      await session.abort().catch(() => undefined);
      throw new CycleError('transfer', new CodedError('RECEIVER_BASE_DISKS', `the receiver builds the disks on base disks ${JSON.stringify(applied)}, not ${JSON.stringify(baseDisks)}`,
        { fix: 'update the receiver (it must support per-disk bases when a VM\'s disks change), then resume the job' }));
    }
  }
  const heldBytes = session.held.reduce((n, h) => n + totalLength(h.ranges), 0);
  // What the receiver holds came from the snapshot the cycle began on. On that snapshot it is kept; on a
  // new one (the first was removed: a pause, an in-process retry) it is of another point in time, so
  // it is read again from this snapshot with the rest.
  const heldIsCurrent = ownSnapshot;
  if (heldBytes > 0 && ownSnapshot) logger.info({ cycleId: input.cycleId, heldBytes }, 'resuming on the cycle\'s own snapshot: the receiver already holds part of it');
  else if (heldBytes > 0) logger.warn({ cycleId: input.cycleId, heldBytes }, 'resuming on a new snapshot: what the receiver holds of this cycle is of an earlier point in time and is read again');

  const results: DiskResult[] = [];
  const progress: DiskProgress[] = [];
  const work: { disk: SnapshotDisk; index: number; ranges: Range[] }[] = [];
  for (const [i, d] of disks.entries()) {
    const held = session.held.find((h) => h.disk === i)?.ranges ?? [];
    // A full read of a disk on top of a base image must also clear what the disk no longer holds.
    const ranges = heldIsCurrent ? subtract(coalesce(areas[i]!), held) : coalesce([...areas[i]!, ...held]);
    const wantZeros = plans[i]!.mode === 'full' && baseOnReceiver && baseDisks[i] !== null;
    const zeroRanges = wantZeros ? subtract(subtract([{ offset: 0, length: d.capacity }], areas[i]!), held) : [];
    for (const z of zeroRanges) await session.send(i, z.offset, null, z.length);
    work.push({ disk: d, index: i, ranges });
    progress.push({ diskKey: d.key, label: d.label, total: totalLength(ranges), done: 0 });
    results.push({ key: d.key, label: d.label, capacity: d.capacity, plan: plans[i]!, changeId: d.changeId, areaBytes: totalLength(ranges), sourceBytesRead: 0 });
  }

  // With checksum on, one digest tree per disk over what it reads: its root goes in the commit, a fixed size whatever the disk's.
  const trees = work.map((w) => (settings.checksum ? new DigestTree(w.ranges) : undefined));
  await step('transfer', input, () => Promise.all(work.map(async (w) => {
    const t0 = performance.now();
    const onChoice = (c: DiskTransportChoice) => {
      results[w.index]!.transport = progress[w.index]!.transport = c.transport;
      results[w.index]!.transportReason = progress[w.index]!.transportReason = c.reason;
      logger.info({ vmRef, diskKey: w.disk.key, transport: c.transport, reason: c.reason }, 'disk transport chosen');
      input.onProgress?.(progress);
    };
    const opened = await input.disks.open(vmRef, snapshot, w.disk, { jobId: input.jobId, transport: settings.transport, onChoice });
    const source = namingDisk(clampReads(opened, input.maxReadSize ?? 2 << 20), w.disk, vmRef, input.jobId);
    const t1 = performance.now();
    dataStart = Math.min(dataStart, t1);
    try {
      const tree = trees[w.index];
      await copyRanges(source, w.ranges, {
        signal: input.signal,
        // reads of whole 1 MiB pieces: each piece's digest is its frame's and a tree leaf (digest-tree.ts)
        readSize: Math.max(PIECE_SIZE, Math.floor(source.maxReadSize / PIECE_SIZE) * PIECE_SIZE),
        send: async (offset, data) => {
          if (!tree) return session.send(w.index, offset, data);
          const digest = await pieceDigests(offset, data);
          tree.add(offset, data.length, digest);
          return session.send(w.index, offset, data, undefined, { digest });
        },
        onRead: (_offset, data) => {
          results[w.index]!.sourceBytesRead += data.length;
          progress[w.index]!.done += data.length;
          input.onProgress?.(progress);
        },
      });
      // Keep this disk's slot (and so the connector's memory bound) until its data is durable:
      // otherwise finished disks would pile up unacknowledged data in their senders' windows.
      const t2 = performance.now();
      await session.flush();
      dataEnd = Math.max(dataEnd, performance.now());
      input.logger.debug({ diskKey: w.disk.key, openMs: Math.round(t1 - t0), readMs: Math.round(t2 - t1), flushMs: Math.round(performance.now() - t2) }, 'disk transferred');
    } finally {
      await source.close().catch(() => undefined);
    }
  })));

  // What a later conversion gives the VM; a vCenter that cannot say does not fail the cycle.
  const hardware = await vcenter.vmHardware?.(vmRef).catch((e: unknown) => {
    logger.warn({ vmRef, err: (e as Error).message }, 'could not read the VM hardware; the image records none');
    return null;
  }) ?? null;
  const image = await step('commit', input, () => session.commit({
    meta: {
      jobId: input.jobId, vmRef, snapshot: snapshot.name,
      changeIds: Object.fromEntries(disks.map((d) => [d.key, d.changeId])),
      diskKeys: disks.map((d) => d.key),
      ...(excluded.length ? { excludedDiskKeys: excluded } : {}),
      diskIdentities: identities,
      ...(hardware ? { vm: hardware } : {}),
    },
    sourceDigests: settings.checksum ? work.map((w) => ({ disk: w.index, tree: { ranges: w.ranges, root: trees[w.index]!.root() } })) : undefined,
  }));
  const st = session.stats();
  return { image, kind: anyFull ? 'full' : 'incremental', disks: results, wireBytes: st.wireBytes, resentBytes: st.resentBytes,
    dataMs: dataEnd > dataStart ? Math.round(dataEnd - dataStart) : 0 };
}

interface CopyOptions {
  signal?: AbortSignal;
  /** Bytes per read (default: the source's maxReadSize, which should then read longer ones in pieces: `clampReads`). */
  readSize?: number;
  send: (offset: number, data: Buffer) => Promise<void>;
  onRead: (offset: number, data: Buffer) => void;
}

/**
 * Read `ranges` from `source` in pieces of at most its maxReadSize (the cycle clamps it with
 * `clampReads`), with up to `source.maxInFlight` reads in flight, and hand each piece to `send`.
 * With `readInto`, a fixed pool of buffers is recycled (send copies before it resolves), so read
 * buffers stay within MAX_READ_BYTES_IN_FLIGHT whatever the disk size.
 */
export async function copyRanges(source: BlockSource, ranges: readonly Range[], o: CopyOptions): Promise<void> {
  // The sender pipelines behind us; more reads in flight than this only grows memory.
  const inFlight = Math.max(1, Math.min(source.maxInFlight, MAX_READS_IN_FLIGHT));
  const queue = new PQueue({ concurrency: inFlight });
  const pool: Buffer[] = [];
  let bytesInFlight = 0;
  let wake: (() => void) | null = null; // the loop below, waiting for bytes to be released
  let failure: unknown;
  const maxRead = o.readSize ?? source.maxReadSize;
  for (const piece of split(ranges, maxRead)) {
    if (failure) break;
    o.signal?.throwIfAborted();
    // Backpressure: never queue more than a few pieces beyond those in flight, nor more bytes.
    await queue.onSizeLessThan(inFlight);
    while (bytesInFlight > 0 && bytesInFlight + piece.length > MAX_READ_BYTES_IN_FLIGHT) await new Promise<void>((r) => { wake = r; });
    bytesInFlight += piece.length;
    queue.add(async () => {
      // full-size pieces reuse a pool of buffers; small ones (incremental cycles) get their own
      const pooled = source.readInto && piece.length > maxRead / 2;
      const whole = pooled ? pool.pop() ?? Buffer.allocUnsafe(maxRead) : source.readInto ? Buffer.allocUnsafe(piece.length) : undefined;
      let data: Buffer;
      if (whole) {
        data = whole.subarray(0, piece.length);
        await source.readInto!(piece.offset, data);
      } else {
        data = await source.read(piece.offset, piece.length);
      }
      crashPoint('engine:read');
      o.onRead(piece.offset, data);
      await o.send(piece.offset, data);
      if (whole && pooled) pool.push(whole);
    }).catch((e) => { failure ??= e; }).finally(() => {
      bytesInFlight -= piece.length;
      const w = wake; wake = null; w?.();
    });
  }
  await queue.onIdle();
  if (failure) throw failure;
  o.signal?.throwIfAborted();
}
