import { UserError } from '../util/errors.ts';
import { parseDuration } from '../util/duration.ts';
import { TRANSPORTS, type JobSettings, type Transport } from '../state/types.ts';
import { parseBandwidthWindows } from './bandwidth-windows.ts';

/** The job setting ranges of docs/design.md. */
export const SETTING_LIMITS = {
  intervalSeconds: { min: 3600, max: 7 * 86400 },
  maxImages: { min: 1, max: 10 },
  compression: { min: 0, max: 10 },
  bandwidthMbps: { min: 0, max: 1_000_000 },
} as const;

export const DEFAULT_SETTINGS: JobSettings = {
  intervalSeconds: 86400,
  maxImages: 3,
  compression: 7,
  bandwidthMbps: 0,
  // Off by default, as SMC's documentation has it ("may slow the transfer"); every extent's SHA-256 on the wire is checked whatever this says.
  checksum: false,
  quiesce: false,
  transport: 'auto',
  autoSync: true,
};

/** Settings as a user writes them (CLI flags, template files): strings or numbers. */
export interface SettingsInput {
  interval?: string | number;
  maxImages?: string | number;
  compression?: string | number;
  bandwidth?: string | number;
  checksum?: boolean | string;
  quiesce?: boolean | string;
  transport?: string;
  autoSync?: boolean | string;
  /** `--bandwidth-window` specs (repeatable; "none" clears them): engine/bandwidth-windows.ts. */
  bandwidthWindow?: string | string[];
}

function intInRange(name: string, flag: string, value: string | number, min: number, max: number): number {
  const n = typeof value === 'number' ? value : Number(value.trim());
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new UserError('BAD_SETTING', `${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(value)}`,
      `pass ${flag} with a value from ${min} to ${max}`);
  }
  return n;
}

function bool(name: string, value: boolean | string): boolean {
  if (typeof value === 'boolean') return value;
  const v = value.trim().toLowerCase();
  if (['on', 'true', 'yes', '1'].includes(v)) return true;
  if (['off', 'false', 'no', '0'].includes(v)) return false;
  throw new UserError('BAD_SETTING', `${name} must be on or off, got ${JSON.stringify(value)}`, `use on or off`);
}

/** Validate user input into a partial JobSettings; every out-of-range value is a UserError naming the range. */
export function parseSettings(input: SettingsInput): Partial<JobSettings> {
  const out: Partial<JobSettings> = {};
  if (input.interval !== undefined) {
    const { min, max } = SETTING_LIMITS.intervalSeconds;
    const secs = typeof input.interval === 'number' ? input.interval : parseDuration(input.interval, 'sync interval');
    if (secs < min || secs > max) {
      throw new UserError('BAD_SETTING', `sync interval must be from 1h to 7d, got ${JSON.stringify(input.interval)}`, 'pass --interval between 1h and 7d');
    }
    out.intervalSeconds = secs;
  }
  if (input.maxImages !== undefined) out.maxImages = intInRange('max kept images', '--max-images', input.maxImages, 1, 10);
  if (input.compression !== undefined) out.compression = intInRange('compression level', '--compression', input.compression, 0, 10);
  if (input.bandwidth !== undefined) {
    out.bandwidthMbps = intInRange('bandwidth limit (Mbps, 0 = unlimited)', '--bandwidth', input.bandwidth, 0, SETTING_LIMITS.bandwidthMbps.max);
  }
  if (input.checksum !== undefined) out.checksum = bool('checksum', input.checksum);
  if (input.quiesce !== undefined) out.quiesce = bool('quiesce', input.quiesce);
  if (input.autoSync !== undefined) out.autoSync = bool('automatic incremental sync', input.autoSync);
  if (input.bandwidthWindow !== undefined) out.bandwidthWindows = parseBandwidthWindows(input.bandwidthWindow);
  if (input.transport !== undefined) {
    if (input.transport === 'http-datastore') input = { ...input, transport: 'http' }; // the older name
    if (!(TRANSPORTS as readonly string[]).includes(input.transport!)) {
      throw new UserError('BAD_SETTING', `unknown disk transport ${JSON.stringify(input.transport)}`, `use one of ${TRANSPORTS.join(', ')}`);
    }
    out.transport = input.transport as Transport;
  }
  return out;
}

/** Defaults, then a template, then overrides: later layers win. */
export function resolveSettings(...layers: (Partial<JobSettings> | undefined)[]): JobSettings {
  return Object.assign({}, DEFAULT_SETTINGS, ...layers.filter(Boolean)) as JobSettings;
}
