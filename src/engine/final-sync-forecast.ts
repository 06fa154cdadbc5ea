/**
 * How long a final sync started now would take — the cutover downtime — from what the job's last
 * cycles measured: the change rate per hour (changed bytes of an incremental over the time between
 * its snapshot and the previous one's), the throughput of moving changed bytes (changed bytes over
 * the time spent reading and flushing them), and the fixed part of a cycle (connect, snapshot, plan,
 * commit, snapshot removal: the cycle's duration minus its data time).
 *
 *   final sync ≈ fixed + rate × (now − last snapshot) / throughput
 *
 * vCenter can tell what changed since a changeId only of a snapshot (QueryChangedDiskAreas), and a
 * snapshot only to forecast would stun the VM; so the bytes changed since the last cycle are the
 * measured rate times the time since its snapshot.
 */
import type { CycleRecord, JobSettings } from '../state/types.ts';
import { bandwidthAt } from './bandwidth-windows.ts';

/** Cycles each measure is taken over (the newest ones). */
export const FORECAST_CYCLES = 3;

export interface CycleRate {
  cycleId: string;
  seq: number;
  /** Changed bytes of the cycle over the hours since the previous cycle's snapshot. */
  bytesPerHour: number;
  changedBytes: number;
  seconds: number;
}

export interface FinalSyncForecast {
  /** Predicted duration of a final sync started now. */
  seconds: number;
  /** Bytes predicted to have changed since the last cycle's snapshot. */
  changedBytes: number;
  /** Seconds since the last committed cycle's snapshot. */
  sinceLastSnapshotSeconds: number;
  /** Change rate the prediction uses (bytes per hour, over the last incrementals). */
  changeRatePerHour: number;
  /** Throughput of changed bytes the prediction uses (bytes/s), the wire limit in force included. */
  throughput: number;
  /** The measured throughput, before the wire limit in force. */
  measuredThroughput: number;
  /** The fixed part of a cycle (median of the last cycles). */
  fixedSeconds: number;
  /** The wire limit now (Mbps, 0 = unlimited), when it bounds the throughput. */
  limitedToMbps?: number;
  /** Per-cycle rates, newest first: what the rate was taken over. */
  rates: CycleRate[];
  /** The last committed cycle the prediction starts from. */
  lastCycleId: string;
}

export type ForecastResult = { available: true; forecast: FinalSyncForecast } | { available: false; reason: string };

const snapshotTime = (c: CycleRecord): number => Date.parse(c.snapshotAt ?? c.startedAt);
const durationMs = (c: CycleRecord): number => c.endedAt ? Date.parse(c.endedAt) - Date.parse(c.startedAt) : 0;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** The change rate of each incremental cycle over the interval since the previous committed one, newest first. */
export function cycleRates(cycles: readonly CycleRecord[]): CycleRate[] {
  const committed = cycles.filter((c) => c.state === 'committed').sort((a, b) => b.seq - a.seq);
  const out: CycleRate[] = [];
  for (let i = 0; i + 1 < committed.length; i++) {
    const c = committed[i]!; const prev = committed[i + 1]!;
    if (c.kind === 'full') continue;
    const seconds = (snapshotTime(c) - snapshotTime(prev)) / 1000;
    if (!(seconds > 0)) continue;
    out.push({ cycleId: c.id, seq: c.seq, changedBytes: c.changedBytes, seconds, bytesPerHour: (c.changedBytes / seconds) * 3600 });
  }
  return out;
}

/**
 * The forecast of a final sync started at `now`, from the job's cycles (any order) and settings (the
 * wire limit in force now, windows included, bounds the throughput).
 */
export function forecastFinalSync(cycles: readonly CycleRecord[], settings: Pick<JobSettings, 'bandwidthMbps' | 'bandwidthWindows'>, now: Date = new Date()): ForecastResult {
  const committed = cycles.filter((c) => c.state === 'committed').sort((a, b) => b.seq - a.seq);
  const last = committed[0];
  if (!last) return { available: false, reason: 'no cycle has committed yet' };
  const rates = cycleRates(committed).slice(0, FORECAST_CYCLES);
  if (!rates.length) return { available: false, reason: 'the change rate needs one incremental cycle after the full one' };
  const changeRatePerSec = rates.reduce((n, r) => n + r.changedBytes, 0) / rates.reduce((n, r) => n + r.seconds, 0);

  // Throughput: incrementals first (their reads are what a final sync does); the full cycle only when no incremental moved data.
  const timed = committed.filter((c) => (c.dataMs ?? 0) > 0 && c.changedBytes > 0);
  const basis = (timed.some((c) => c.kind !== 'full') ? timed.filter((c) => c.kind !== 'full') : timed).slice(0, FORECAST_CYCLES);
  if (!basis.length) return { available: false, reason: 'no cycle has measured its throughput yet (a cycle that moved data records it)' };
  const measuredThroughput = basis.reduce((n, c) => n + c.changedBytes, 0) / (basis.reduce((n, c) => n + c.dataMs!, 0) / 1000);
  // The wire limit in force now; the wire carries compressed bytes, so the limit allows changed bytes at the measured ratio.
  const limit = bandwidthAt(settings, now).mbps;
  const wireRatio = Math.max(0.01, basis.reduce((n, c) => n + c.wireBytes, 0) / basis.reduce((n, c) => n + c.changedBytes, 0));
  const limitBytes = limit > 0 ? (limit * 1e6) / 8 / wireRatio : Infinity;
  const throughput = Math.min(measuredThroughput, limitBytes);

  const fixedOf = committed.filter((c) => c.kind !== 'full' && c.endedAt);
  const fixedBasis = (fixedOf.length ? fixedOf : committed.filter((c) => c.endedAt)).slice(0, FORECAST_CYCLES);
  const fixedSeconds = Math.max(0, median(fixedBasis.map((c) => (durationMs(c) - (c.dataMs ?? 0)) / 1000)));

  const sinceLastSnapshotSeconds = Math.max(0, (now.getTime() - snapshotTime(last)) / 1000);
  const changedBytes = changeRatePerSec * sinceLastSnapshotSeconds;
  return {
    available: true,
    forecast: {
      seconds: fixedSeconds + changedBytes / throughput,
      changedBytes, sinceLastSnapshotSeconds, changeRatePerHour: changeRatePerSec * 3600, throughput, measuredThroughput, fixedSeconds,
      ...(limitBytes < measuredThroughput ? { limitedToMbps: limit } : {}),
      rates, lastCycleId: last.id,
    },
  };
}

const units = (n: number, names: string[], base: number): string => {
  let v = n; let u = 0;
  while (Math.abs(v) >= base && u < names.length - 1) { v /= base; u++; }
  return `${v.toFixed(v < 10 && u > 0 ? 1 : 0)} ${names[u]}`;
};
export const formatSize = (n: number): string => units(n, ['B', 'KiB', 'MiB', 'GiB', 'TiB'], 1024);
/** Throughput as network people read it (decimal MB/s). */
export const formatRate = (bytesPerSec: number): string => `${units(bytesPerSec, ['B', 'kB', 'MB', 'GB'], 1000)}/s`;

export function formatSeconds(s: number): string {
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

/** `final sync now: ~40 s (1.2 GiB changed since the last cycle, 150 MB/s)`, and what it rests on. */
export function forecastLines(r: ForecastResult, cycleRunning = false): string[] {
  if (!r.available) return [`final sync now: no forecast yet (${r.reason})`];
  const f = r.forecast;
  return [
    ...(cycleRunning ? ['a cycle is running: a final sync requested now runs after it; the forecast is from the last committed cycle'] : []),
    `final sync now: ~${formatSeconds(f.seconds)} (${formatSize(f.changedBytes)} changed since the last cycle, ${formatRate(f.throughput)}${f.limitedToMbps !== undefined ? `, the ${f.limitedToMbps} Mbps limit` : ''})`,
    `  change rate ${formatSize(f.changeRatePerHour)}/h over the last ${f.rates.length} cycle${f.rates.length === 1 ? '' : 's'} (${f.rates.map((x) => `${formatSize(x.bytesPerHour)}/h`).join(', ')}), ` +
      `${formatSeconds(f.sinceLastSnapshotSeconds)} since the last snapshot; fixed part of a cycle ${formatSeconds(f.fixedSeconds)}`,
  ];
}
