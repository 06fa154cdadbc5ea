/**
 * Progress of long transfers, one row per item (disk): bytes done and total, speed, remaining
 * time = (total − done) / speed. On a terminal: bars redrawn in place on stderr. With --json:
 * one JSON line per update on stdout (throttled). Otherwise: a plain line now and then.
 */
import { formatBytes } from './output.ts';
import { formatDuration } from '../util/duration.ts';

export interface ProgressUpdate {
  label: string;
  done: number;
  total: number;
  /** Extra fields shown after the bar and included in JSON lines. */
  extra?: Record<string, number | string>;
}

interface Row extends ProgressUpdate {
  key: string;
  startedAt: number;
  /** Smoothed bytes per second. */
  speed: number;
  lastAt: number;
  lastDone: number;
  lastEmit: number;
}

export interface ProgressOptions {
  json?: boolean;
  /** Where bars and plain lines go (default stderr). */
  stream?: NodeJS.WriteStream;
  /** Where JSON lines go (default stdout). */
  jsonStream?: NodeJS.WritableStream;
  /** Minimum ms between redraws / JSON lines per row. */
  intervalMs?: number;
  now?: () => number;
}

export class Progress {
  private readonly rows = new Map<string, Row>();
  private drawn = 0;
  private lastDraw = 0;
  private readonly tty: boolean;
  private readonly o: Required<Omit<ProgressOptions, 'stream' | 'jsonStream'>> & { stream: NodeJS.WriteStream; jsonStream: NodeJS.WritableStream };

  constructor(opts: ProgressOptions = {}) {
    this.o = {
      json: opts.json ?? false,
      stream: opts.stream ?? process.stderr,
      jsonStream: opts.jsonStream ?? process.stdout,
      intervalMs: opts.intervalMs ?? (opts.json ? 1000 : 200),
      now: opts.now ?? Date.now,
    };
    this.tty = !this.o.json && !!this.o.stream.isTTY;
  }

  update(key: string, u: ProgressUpdate): void {
    const now = this.o.now();
    let r = this.rows.get(key);
    if (!r) {
      r = { ...u, key, startedAt: now, speed: 0, lastAt: now, lastDone: u.done, lastEmit: -Infinity };
      this.rows.set(key, r);
    }
    const dt = (now - r.lastAt) / 1000;
    if (dt >= 0.25) {
      const inst = (u.done - r.lastDone) / dt;
      r.speed = r.speed === 0 ? inst : 0.7 * r.speed + 0.3 * inst;
      r.lastAt = now;
      r.lastDone = u.done;
    } else if (r.speed === 0 && now > r.startedAt) {
      r.speed = (u.done - 0) / ((now - r.startedAt) / 1000);
    }
    Object.assign(r, u);
    const finished = u.done >= u.total;
    if (this.o.json) {
      if (finished || now - r.lastEmit >= this.o.intervalMs) {
        r.lastEmit = now;
        this.o.jsonStream.write(`${JSON.stringify(this.snapshot(r))}\n`);
      }
    } else if (this.tty) {
      if (finished || now - this.lastDraw >= this.o.intervalMs) this.draw(now);
    } else if (finished || now - r.lastEmit >= Math.max(this.o.intervalMs, 10_000)) {
      r.lastEmit = now;
      this.o.stream.write(`${this.line(r, false)}\n`);
    }
  }

  /** The figures of one row as reported in JSON lines. */
  snapshot(r: Row): Record<string, unknown> {
    const remaining = r.speed > 0 ? (r.total - r.done) / r.speed : null;
    return {
      type: 'progress', key: r.key, label: r.label, done: r.done, total: r.total,
      speedBytesPerSec: Math.round(r.speed), remainingSec: remaining === null ? null : Math.round(remaining),
      ...(r.extra ?? {}),
    };
  }

  private line(r: Row, bar: boolean): string {
    const frac = r.total > 0 ? Math.min(1, r.done / r.total) : 1;
    const width = 24;
    const fill = Math.round(frac * width);
    const remaining = r.done >= r.total ? 0 : r.speed > 0 ? (r.total - r.done) / r.speed : Infinity;
    const extra = Object.entries(r.extra ?? {}).map(([k, v]) => `${k} ${typeof v === 'number' ? formatBytes(v) : v}`).join('  ');
    return [
      r.label,
      bar ? `[${'#'.repeat(fill)}${'.'.repeat(width - fill)}]` : '',
      `${(frac * 100).toFixed(1).padStart(5)}%`,
      `${formatBytes(r.done)}/${formatBytes(r.total)}`,
      `${formatBytes(r.speed)}/s`,
      `eta ${formatDuration(remaining)}`,
      extra,
    ].filter(Boolean).join('  ');
  }

  private draw(now: number): void {
    this.lastDraw = now;
    let out = this.drawn > 0 ? `\x1b[${this.drawn}A` : '';
    const cols = this.o.stream.columns || 120;
    for (const r of this.rows.values()) out += `\x1b[2K${this.line(r, true).slice(0, cols - 1)}\n`;
    this.drawn = this.rows.size;
    this.o.stream.write(out);
  }

  /** Final redraw; the next update starts a new block of rows. */
  finish(): void {
    if (this.tty && this.rows.size) this.draw(this.o.now());
    this.rows.clear();
    this.drawn = 0;
  }
}
