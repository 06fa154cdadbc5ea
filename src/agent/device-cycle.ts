/**
 * One agent sync cycle: every device of the source into one image. Compares block digests with
 * the previous image's manifest (cached in the state dir, fetched from the receiver when missing
 * or stale), sends the changed blocks, commits, then records the new manifest. Survives the
 * receiver or the agent dying mid-cycle: the open cycle id is persisted and resumed, and ranges
 * the receiver already holds are not sent again.
 */
import { randomBytes } from 'node:crypto';
import { rename, rm, mkdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { BlockSource } from '../source/types.ts';
import { SourceReadError } from '../source/retry.ts';
import type { DiskSpec, ImageInfo } from '../model/images.ts';
import { silentLogger } from '../util/log.ts';
import { writeFileAtomic } from '../util/fsync.ts';
import { UserError, errorMessage, isTransient } from '../util/errors.ts';
import { BLOCK_SIZE, DIGEST_SIZE, ManifestReader, ManifestWriter, blockCount } from './manifest.ts';
import { scanDisk, type ScanResult } from './scan.ts';
import { fullCycleEstimate } from './estimate.ts';
import type { ReceiverCycle, SessionStats } from '../transfer/contract.ts';
import type { AgentSender } from './connect.ts';
import type { AgentState } from './state.ts';
import { crashPoint } from '../util/crash.ts';

export interface DiskProgress {
  disk: number;
  label: string;
  /** Bytes of the device scanned. */
  done: number;
  total: number;
  /** Bytes of changed blocks found so far. */
  changed: number;
  /** Payload and wire bytes sent in this cycle so far (all attempts). */
  payloadBytes: number;
  wireBytes: number;
  resentBytes: number;
}

export interface CycleOptions {
  sources: BlockSource[];
  /** Opens a connection to the receiver (a fresh one after each failure). */
  connect: () => Promise<AgentSender>;
  state: AgentState;
  checksum?: boolean;
  maxImages?: number;
  /** Keep retrying transient failures (receiver down, connection lost) this long; default 10 min. */
  retryForMs?: number;
  logger?: Logger;
  onProgress?: (p: DiskProgress) => void;
  /** Called with each attempt's session (for tests and the CLI's bandwidth/compression changes). */
  onSession?: (s: ReceiverCycle) => void;
  signal?: AbortSignal;
  /** The id of a new cycle (the connector's, under `agent serve`); an open cycle in the state keeps its own. */
  cycleId?: string;
}

export interface CycleReport {
  imageId: string;
  cycleId: string;
  baseImageId: string | null;
  /** True when this run continued a cycle left open by an earlier run. */
  resumedFromState: boolean;
  attempts: number;
  disks: (ScanResult & { label: string })[];
  /** Bytes of changed blocks over all disks (from the last attempt's scan). */
  changedBytes: number;
  /** Summed over all attempts of this run. */
  payloadBytes: number;
  wireBytes: number;
  extents: number;
  /** Wire bytes the sender had to send a second time after a reconnect. */
  resentBytes: number;
  durationMs: number;
}


/** The default source id: the host name made into a valid id. */
export function defaultSourceId(): string {
  const h = hostname().toLowerCase().split('.')[0]!.replace(/[^a-z0-9-]+/g, '-').replace(/^-+/, '').slice(0, 64);
  return h || 'agent';
}

function newCycleId(): string {
  return `c${new Date().toISOString().replace(/[-:.TZ]/g, '').slice(0, 14)}-${randomBytes(3).toString('hex')}`;
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> => new Promise((res, rej) => {
  const t = setTimeout(res, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); rej(signal.reason ?? new Error('aborted')); }, { once: true });
});

export async function runDeviceCycle(o: CycleOptions): Promise<CycleReport> {
  const log = o.logger ?? silentLogger;
  const started = Date.now();
  const deadline = started + (o.retryForMs ?? 10 * 60_000);
  const disks: DiskSpec[] = o.sources.map((s, disk) => ({ disk, capacity: s.capacity, label: s.uri }));
  const totals = { payloadBytes: 0, wireBytes: 0, extents: 0, resentBytes: 0 };
  let attempts = 0;
  let delay = 250;
  const resumedFromState = (await o.state.openCycle()) !== null;
  for (;;) {
    attempts++;
    let sender: AgentSender | undefined;
    let session: ReceiverCycle | undefined;
    const before = { ...totals };
    try {
      sender = await o.connect();
      const out = await attempt(o, sender, disks, log, (s) => { session = s; o.onSession?.(s); }, totals, before);
      return { ...out, resumedFromState, attempts, durationMs: Date.now() - started, ...totals };
    } catch (e) {
      if (session) addStats(totals, before, safeStats(session));
      if (o.signal?.aborted) throw e;
      // reconnecting cannot help a device that fails to read
      if (e instanceof SourceReadError || !isTransient(e) || Date.now() + delay > deadline) throw e;
      log.warn({ err: errorMessage(e), errCode: (e as { code?: string }).code, retryInMs: delay }, 'cycle interrupted; reconnecting to resume it');
      await sleep(delay, o.signal);
      delay = Math.min(delay * 2, 5000);
    } finally {
      try { await sender?.close(); } catch { /* already gone */ }
    }
  }
}

function safeStats(s: ReceiverCycle): SessionStats | undefined {
  try { return s.stats(); } catch { return undefined; }
}

type Totals = { payloadBytes: number; wireBytes: number; extents: number; resentBytes: number };

function addStats(totals: Totals, before: Totals, s: SessionStats | undefined): void {
  if (!s) return;
  totals.resentBytes = before.resentBytes + s.resentBytes;
  totals.payloadBytes = before.payloadBytes + s.payloadBytes;
  totals.wireBytes = before.wireBytes + s.wireBytes;
  totals.extents = before.extents + s.extents;
}

async function attempt(
  o: CycleOptions, sender: AgentSender, disks: DiskSpec[], log: Logger,
  setSession: (s: ReceiverCycle) => void,
  totals: Totals, before: Totals,
): Promise<Omit<CycleReport, 'resumedFromState' | 'attempts' | 'durationMs' | keyof Totals>> {
  const images = await sender.listImages();
  let open = await o.state.openCycle();
  if (open && images.some((i) => i.cycleId === open!.cycleId)) {
    // Committed, but the agent died before recording it: nothing left to do for that cycle.
    log.info({ cycleId: open.cycleId }, 'the open cycle was already committed');
    await o.state.setOpenCycle(null);
    open = null;
  }
  if (open && open.baseImageId !== null && !images.some((i) => i.imageId === open!.baseImageId)) {
    log.warn({ cycleId: open.cycleId, baseImageId: open.baseImageId }, 'the base image of the open cycle is gone; starting a new cycle');
    await o.state.setOpenCycle(null);
    open = null;
  }
  const newest = images.length ? images.reduce((a, b) => (b.seq > a.seq ? b : a)) : null;
  const baseImageId = open ? open.baseImageId : newest?.imageId ?? null;
  const base = baseImageId === null ? null : images.find((i) => i.imageId === baseImageId)!;
  if (base) await ensureManifest(o, sender, base, log);
  const cycleId = open?.cycleId ?? o.cycleId ?? newCycleId();
  if (!open) await o.state.setOpenCycle({ cycleId, baseImageId, startedAt: new Date().toISOString() });

  const estimatedBytes = base ? undefined : await fullCycleEstimate(o.sources);
  const session = await sender.beginCycle({ cycleId, disks, baseImageId, maxImages: o.maxImages, ...(estimatedBytes === undefined ? {} : { estimatedBytes }) });
  setSession(session);
  const heldBytes = session.held.reduce((n, h) => n + h.ranges.reduce((m, r) => m + r.length, 0), 0);
  log.info({ cycleId, baseImageId, resumed: !!open, heldBytes }, 'cycle started');

  const newDir = await o.state.prepareNewManifestDir(cycleId);
  const results: (ScanResult & { label: string })[] = [];
  for (const [disk, source] of o.sources.entries()) {
    const oldManifest = await ManifestReader.open(base && disk < base.disks.length ? o.state.manifestPath(base.imageId, disk) : null, source.capacity);
    const newManifest = await ManifestWriter.create(`${newDir}/disk-${disk}.bin`);
    try {
      const label = source.uri;
      const r = await scanDisk({
        disk, source, oldManifest, newManifest,
        held: session.held.find((h) => h.disk === disk)?.ranges ?? [],
        wholeDigest: o.checksum,
        signal: o.signal,
        sink: { send: (d, off, data, len, so) => session.send(d, off, data, len, so) },
        onProgress: (p) => {
          addStats(totals, before, safeStats(session));
          o.onProgress?.({ ...p, label, payloadBytes: totals.payloadBytes, wireBytes: totals.wireBytes, resentBytes: totals.resentBytes });
        },
      });
      await newManifest.finish();
      results.push({ ...r, label });
    } catch (e) {
      await newManifest.discard();
      throw e;
    } finally {
      await oldManifest.close();
    }
  }

  const image = await session.commit({
    meta: { agent: { hostname: hostname(), devices: o.sources.map((s) => s.uri) } },
    sourceDigests: o.checksum ? results.map((r) => ({ disk: r.disk, sha256: r.sha256! })) : undefined,
  });
  addStats(totals, before, safeStats(session));
  crashPoint('agent:after-commit');
  await o.state.promoteManifest(newDir, {
    imageId: image.imageId, cycleId: image.cycleId, committedAt: image.committedAt,
    blockSize: BLOCK_SIZE, capacities: disks.map((d) => d.capacity),
  });
  await o.state.setOpenCycle(null);
  log.info({ cycleId, imageId: image.imageId, payloadBytes: totals.payloadBytes, wireBytes: totals.wireBytes }, 'cycle committed');
  return {
    imageId: image.imageId, cycleId, baseImageId, disks: results,
    changedBytes: results.reduce((n, r) => n + r.changedBytes, 0),
  };
}

/** Make sure the state dir holds the manifest of `image`, fetching it from the receiver if needed. */
async function ensureManifest(o: CycleOptions, sender: AgentSender, image: ImageInfo, log: Logger): Promise<void> {
  const cached = await o.state.cachedManifest({ imageId: image.imageId, cycleId: image.cycleId, committedAt: image.committedAt }, BLOCK_SIZE);
  if (cached) return;
  log.info({ imageId: image.imageId }, 'fetching the block digests of the base image from the receiver');
  const tmp = `${o.state.dir}/manifests/fetch-${image.imageId}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true, mode: 0o700 });
  for (const d of image.disks) {
    const w = await ManifestWriter.create(`${tmp}/disk-${d.disk}.bin`);
    try {
      // The stream may yield one 16-byte digest at a time: batch before writing.
      const batch = Buffer.allocUnsafe(64 * 1024);
      let used = 0;
      for await (const chunk of sender.blockDigests(image.imageId, d.disk, BLOCK_SIZE)) {
        if (used + chunk.length > batch.length) { await w.append(batch.subarray(0, used)); used = 0; }
        if (chunk.length > batch.length) await w.append(chunk);
        else { batch.set(chunk, used); used += chunk.length; }
      }
      if (used) await w.append(batch.subarray(0, used));
      const size = await w.finish();
      if (size !== blockCount(d.capacity) * DIGEST_SIZE) {
        throw new UserError('DIGESTS_SHORT', `the receiver sent ${size / DIGEST_SIZE} block digests for disk ${d.disk} of image ${image.imageId}, expected ${blockCount(d.capacity)}`,
          'retry; if it persists, check the receiver\'s version');
      }
    } catch (e) {
      await w.discard();
      throw e;
    }
  }
  const target = o.state.imageManifestDir(image.imageId);
  await rm(target, { recursive: true, force: true });
  await rename(tmp, target);
  await writeFileAtomic(`${target}/meta.json`, `${JSON.stringify({
    imageId: image.imageId, cycleId: image.cycleId, committedAt: image.committedAt,
    blockSize: BLOCK_SIZE, capacities: image.disks.map((d) => d.capacity),
  }, null, 2)}\n`);
}
