/**
 * Bandwidth windows: a different wire limit by day of the week and time of day, in a named time zone
 * (`--bandwidth-window "Mon-Fri 08:00-18:00 Europe/Paris=50"`). Parsing and checking a window, the
 * limit in force at an instant, and a follower that moves a running cycle's token bucket when a
 * window opens or closes.
 */
import { UserError } from '../util/errors.ts';
import type { BandwidthWindow, JobSettings } from '../state/types.ts';

const DAY_NAMES = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] as const;
const DAY_LABELS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'] as const;
export const MAX_WINDOWS = 16;
const MAX_MBPS = 1_000_000;

const FIX = 'write it like "Mon-Fri 08:00-18:00 Europe/Paris=50" (days, from-to in 24 h time, an IANA time zone, = the limit in Mbps; 0 = unlimited), or "none" to remove the windows';

function bad(spec: string, why: string): UserError {
  return new UserError('BAD_BANDWIDTH_WINDOW', `bandwidth window ${JSON.stringify(spec)}: ${why}`, FIX);
}

/** A time zone name Intl knows (IANA names, UTC), in its canonical spelling; else undefined. */
export function canonicalTimeZone(name: string): string | undefined {
  try {
    return new Intl.DateTimeFormat('en-US', { timeZone: name }).resolvedOptions().timeZone;
  } catch {
    return undefined;
  }
}

/** The connector's own time zone (windows written without one are in it, and say so). */
export function localTimeZone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
}

function parseDay(spec: string, token: string): number {
  const i = DAY_NAMES.indexOf(token.slice(0, 3).toLowerCase() as (typeof DAY_NAMES)[number]);
  const full = ['sunday', 'monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday'];
  if (i < 0 || !(token.length === 3 || full[i] === token.toLowerCase())) throw bad(spec, `unknown day ${JSON.stringify(token)} (use Mon, Tue, Wed, Thu, Fri, Sat, Sun)`);
  return i;
}

function parseDays(spec: string, text: string): number[] {
  const t = text.toLowerCase();
  if (t === 'daily' || t === '*' || t === 'every-day') return [0, 1, 2, 3, 4, 5, 6];
  const days = new Set<number>();
  for (const part of text.split(',')) {
    const [a, b, ...rest] = part.split('-');
    if (rest.length || !a) throw bad(spec, `bad days ${JSON.stringify(part)}`);
    const from = parseDay(spec, a);
    if (b === undefined) { days.add(from); continue; }
    const to = parseDay(spec, b);
    for (let d = from; ; d = (d + 1) % 7) { days.add(d); if (d === to) break; } // Fri-Mon wraps over the weekend
  }
  return [...days].sort((x, y) => x - y);
}

function parseClock(spec: string, text: string): number {
  const m = /^(\d{1,2}):(\d{2})$/.exec(text);
  if (!m) throw bad(spec, `bad time ${JSON.stringify(text)} (use HH:MM, 24 h)`);
  const h = Number(m[1]); const min = Number(m[2]);
  if (min > 59 || h > 24 || (h === 24 && min !== 0)) throw bad(spec, `bad time ${JSON.stringify(text)} (00:00 to 24:00)`);
  return h * 60 + min;
}

const hhmm = (minutes: number): string => `${String(Math.floor(minutes / 60)).padStart(2, '0')}:${String(minutes % 60).padStart(2, '0')}`;

/**
 * One window: `[DAYS] HH:MM-HH:MM [TIME_ZONE]=MBPS`. DAYS: Mon, Mon-Fri, Sat,Sun, Fri-Mon, daily
 * (default: every day). A window whose end is before its start runs past midnight into the next day.
 * Without a zone the window is in `defaultZone` (the connector's), which is then stored with it.
 */
export function parseBandwidthWindow(spec: string, defaultZone = localTimeZone()): BandwidthWindow {
  const eq = spec.lastIndexOf('=');
  if (eq < 0) throw bad(spec, 'no "=MBPS" limit');
  const limit = spec.slice(eq + 1).trim();
  if (!/^\d+$/.test(limit) || Number(limit) > MAX_MBPS) throw bad(spec, `the limit must be a whole number of Mbps from 0 (unlimited) to ${MAX_MBPS}, got ${JSON.stringify(limit)}`);
  const words = spec.slice(0, eq).trim().split(/\s+/).filter(Boolean);
  const timeAt = words.findIndex((w) => /^\d{1,2}:\d{2}-\d{1,2}:\d{2}$/.test(w));
  if (timeAt < 0) throw bad(spec, 'no HH:MM-HH:MM time range');
  if (timeAt > 1 || words.length > timeAt + 2) throw bad(spec, 'expected days, a time range and a time zone, in that order');
  const days = timeAt === 1 ? parseDays(spec, words[0]!) : [0, 1, 2, 3, 4, 5, 6];
  const [from, to] = words[timeAt]!.split('-') as [string, string];
  const start = parseClock(spec, from); const end = parseClock(spec, to);
  if (start === end) throw bad(spec, 'the window is empty (its start is its end); use 00:00-24:00 for a whole day');
  if (start === 24 * 60) throw bad(spec, 'a window cannot start at 24:00');
  const zoneText = words[timeAt + 1] ?? defaultZone;
  const timeZone = canonicalTimeZone(zoneText);
  if (!timeZone) throw bad(spec, `unknown time zone ${JSON.stringify(zoneText)} (use an IANA name such as Europe/Paris, America/New_York or UTC)`);
  return { days, start: hhmm(start), end: hhmm(end), timeZone, mbps: Number(limit) };
}

/** The windows of a setting: each spec parsed; "none" (alone) clears them. */
export function parseBandwidthWindows(specs: string | readonly string[], defaultZone = localTimeZone()): BandwidthWindow[] {
  const list = (typeof specs === 'string' ? [specs] : [...specs]).flatMap((s) => s.split(';')).map((s) => s.trim()).filter(Boolean);
  if (list.length === 1 && list[0]!.toLowerCase() === 'none') return [];
  if (list.length > MAX_WINDOWS) throw new UserError('BAD_BANDWIDTH_WINDOW', `${list.length} bandwidth windows; at most ${MAX_WINDOWS} are kept per job`, 'merge windows that share a limit (days like Mon-Fri or Sat,Sun)');
  return list.map((s) => parseBandwidthWindow(s, defaultZone));
}

/** The window as a user writes it (`Mon-Fri 08:00-18:00 Europe/Paris=50`). */
export function formatBandwidthWindow(w: BandwidthWindow): string {
  return `${formatDays(w.days)} ${w.start}-${w.end} ${w.timeZone}=${w.mbps}`;
}

function formatDays(days: readonly number[]): string {
  if (days.length === 7) return 'daily';
  // runs of consecutive days, Mon first (so Mon-Fri reads as users write it)
  const order = [1, 2, 3, 4, 5, 6, 0].filter((d) => days.includes(d));
  const runs: number[][] = [];
  for (const d of order) {
    const last = runs[runs.length - 1];
    if (last && (last[last.length - 1]! + 1) % 7 === d) last.push(d); else runs.push([d]);
  }
  // a run through Sunday into Monday (Fri-Mon) is one run
  const head = runs[0]!; const tail = runs[runs.length - 1]!;
  if (runs.length > 1 && head[0] === 1 && tail[tail.length - 1] === 0) { runs.pop(); runs[0] = [...tail, ...head]; }
  return runs.map((r) => (r.length > 2 ? `${DAY_LABELS[r[0]!]}-${DAY_LABELS[r[r.length - 1]!]}` : r.map((d) => DAY_LABELS[d]).join(','))).join(',');
}

const formatters = new Map<string, Intl.DateTimeFormat>();

/** Day of the week (0 = Sunday) and minute of the day of an instant in a time zone. */
function localTime(at: Date, timeZone: string): { day: number; minute: number } {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, weekday: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
    formatters.set(timeZone, f);
  }
  let day = 0; let hour = 0; let minute = 0;
  for (const p of f.formatToParts(at)) {
    if (p.type === 'weekday') day = DAY_NAMES.indexOf(p.value.toLowerCase().slice(0, 3) as (typeof DAY_NAMES)[number]);
    else if (p.type === 'hour') hour = Number(p.value);
    else if (p.type === 'minute') minute = Number(p.value);
  }
  return { day, minute: hour * 60 + minute };
}

const minutesOf = (t: string): number => Number(t.slice(0, 2)) * 60 + Number(t.slice(3, 5));

/** The window covers the instant (a window past midnight covers the next day's early hours). */
export function windowCovers(w: BandwidthWindow, at: Date): boolean {
  const { day, minute } = localTime(at, w.timeZone);
  const start = minutesOf(w.start); const end = minutesOf(w.end);
  if (start < end) return w.days.includes(day) && minute >= start && minute < end;
  return (w.days.includes(day) && minute >= start) || (w.days.includes((day + 6) % 7) && minute < end);
}

export interface BandwidthNow {
  /** The limit in force, Mbps (0 = unlimited). */
  mbps: number;
  /** The window that sets it; absent: the job's `--bandwidth`. */
  window?: BandwidthWindow;
}

/** The limit at an instant: the first listed window that covers it, else the job's bandwidth setting. */
export function bandwidthAt(settings: Pick<JobSettings, 'bandwidthMbps' | 'bandwidthWindows'>, at: Date): BandwidthNow {
  const w = (settings.bandwidthWindows ?? []).find((x) => windowCovers(x, at));
  return w ? { mbps: w.mbps, window: w } : { mbps: settings.bandwidthMbps };
}

/** When the limit next changes (to the minute), looking up to a week ahead; null when it never does. */
export function nextBandwidthChange(settings: Pick<JobSettings, 'bandwidthMbps' | 'bandwidthWindows'>, from: Date): { at: Date; mbps: number } | null {
  if (!settings.bandwidthWindows?.length) return null;
  const now = bandwidthAt(settings, from).mbps;
  const first = Math.floor(from.getTime() / 60_000) * 60_000 + 60_000;
  for (let t = first; t <= from.getTime() + 8 * 86_400_000; t += 60_000) {
    const m = bandwidthAt(settings, new Date(t)).mbps;
    if (m !== now) return { at: new Date(t), mbps: m };
  }
  return null;
}

export interface BandwidthFollower {
  /** Read the settings again now (a `job set` changed them). */
  refresh(): void;
  stop(): void;
  readonly mbps: number;
}

/**
 * Keeps a running cycle's wire limit on the window in force: sets it at once, then reads the clock
 * every `intervalMs` (1 s) and moves the token bucket when the limit changes, so a window's edge
 * reaches a cycle in flight within about a second.
 */
export function followBandwidth(o: {
  settings: () => Pick<JobSettings, 'bandwidthMbps' | 'bandwidthWindows'>;
  apply: (mbps: number) => void;
  clock?: () => Date;
  intervalMs?: number;
  onChange?: (c: { from: number; to: number; window?: BandwidthWindow }) => void;
}): BandwidthFollower {
  const clock = o.clock ?? (() => new Date());
  let current = bandwidthAt(o.settings(), clock());
  o.apply(current.mbps);
  const check = (force = false) => {
    const next = bandwidthAt(o.settings(), clock());
    if (next.mbps === current.mbps) {
      current = next;
      if (force) o.apply(next.mbps);
      return;
    }
    const from = current.mbps;
    current = next;
    o.apply(next.mbps);
    o.onChange?.({ from, to: next.mbps, window: next.window });
  };
  const timer = setInterval(() => check(), o.intervalMs ?? 1000);
  timer.unref();
  return {
    refresh: () => check(true),
    stop: () => clearInterval(timer),
    get mbps() { return current.mbps; },
  };
}
