/**
 * Compression that never slows the link, by two rules:
 *
 * 1. Waits: the sender's pump reports, for each extent it writes, how long it waited for that
 *    extent's compression and how long for the network (socket drain, bandwidth tokens). While
 *    compression is what it waits for, the link is faster than the codec workers: new pieces go out
 *    uncompressed (still hashed). Quick, but blind to costs it does not wait for directly, such as the
 *    receiver's decompression or both ends sharing CPUs.
 * 2. Measured rate, for fast links: packing alternates between the preferred mode (compressed at
 *    first) for a period and a probe of the other mode (`probeMs`). The source bytes of each phase's
 *    pieces are counted as they are written, after the first `settleBytes` (the sender's window and
 *    the receiver's queues let a new mode run at the old one's pace at first), over the time from the
 *    first to the last counted write; the mode that moved more bytes per second is preferred
 *    (uncompressed only when faster by PROBE_MARGIN). Uncompressed is only probed while compressed
 *    data moves at least `minProbeRate` (on a slower link compression pays), and periods double while
 *    the preferred mode keeps winning.
 *
 * On a fast link compressed time is what costs: the first period ends as soon as its compressed
 * rate is measured at `minProbeRate` or more (the raw probe starts then, not after `periodMs`), and
 * while raw is preferred a compressed probe is shorter the wider raw's last margin (`probeMs` divided
 * by the margin, at most by MAX_PROBE_SHRINK; never shorter than it takes to measure it), since a
 * clear loser needs less time to be confirmed.
 *
 * On a slow or rate-limited link every piece is compressed (both rules agree).
 */
export type PackMode = 'compressed' | 'raw';

export interface GovernorTiming {
  /** First period in the preferred mode (ms); doubles while the preferred mode wins, up to maxPeriodMs. */
  periodMs: number;
  maxPeriodMs: number;
  /** How long new pieces are packed in the other mode for a probe (ms). */
  probeMs: number;
  /** Bytes of a phase's pieces written before its rate is measured. */
  settleBytes: number;
  /** Source bytes per ms compressed pieces must move for uncompressed to be worth a probe. */
  minProbeRate: number;
}

export const DEFAULT_TIMING: GovernorTiming = { periodMs: 3000, maxPeriodMs: 120_000, probeMs: 2000, settleBytes: 96 << 20, minProbeRate: 50_000 };
/** Uncompressed becomes the preferred mode only when it moves this much more data per second. */
export const PROBE_MARGIN = 1.1;
/** The most a compressed probe is shortened while raw wins by a wide margin. */
export const MAX_PROBE_SHRINK = 4;

/** What a phase's written pieces moved (after settling). */
export class PackPhase {
  private written = 0;
  private counted = 0;
  private first = 0;
  private last = 0;
  constructor(readonly mode: PackMode, private readonly settleBytes: number) {}
  add(length: number, now: number): void {
    this.written += length;
    if (this.written <= this.settleBytes) { this.first = now; return; }
    this.counted += length;
    this.last = now;
  }
  /** Bytes per ms, or null before enough was measured (a quarter of the settling bytes). */
  rate(): number | null {
    return this.counted >= this.settleBytes / 4 && this.last > this.first ? this.counted / (this.last - this.first) : null;
  }
}

export class CompressionGovernor {
  /** Decayed balance of (waited for packing − waited for the network), in ms per written extent. */
  private balance = 0;
  /** Pieces packed uncompressed by either rule, and their bytes. */
  rawPieces = 0;
  rawBytes = 0;

  private preferred: PackMode = 'compressed';
  private period: number;
  private phaseEnd: number;
  private current: PackPhase;
  /** A probe (running, or over and being measured) and the preferred phase before it. */
  private probe: PackPhase | null = null;
  private reference: PackPhase | null = null;
  private decideBy = 0;
  /** raw rate / compressed rate at the last decision (1 before any). */
  private lastMargin = 1;
  /** When the running probe would end unshortened. */
  private probeFullEnd = 0;
  /** The mode each decision chose (tests and logs). */
  readonly decisions: PackMode[] = [];

  /** `thresholdMs`: ms of pump idling per extent above which compression counts as the bottleneck. */
  constructor(private readonly thresholdMs = 0.2, private readonly decay = 0.8,
    private readonly timing: GovernorTiming = DEFAULT_TIMING, private readonly clock: () => number = () => performance.now()) {
    this.period = timing.periodMs;
    this.phaseEnd = clock() + this.period;
    this.current = new PackPhase('compressed', timing.settleBytes);
  }

  /** One extent written: ms the pump waited for its packing, and for the network before it. */
  observe(waitedForPackMs: number, waitedForNetworkMs: number): void {
    this.balance = this.decay * this.balance + (1 - this.decay) * (waitedForPackMs - waitedForNetworkMs);
  }

  /**
   * How to pack the next piece of `length` bytes at `level`: the level (null: uncompressed), and the
   * phase to hand to `written` when the piece goes out (undefined where compression is off).
   */
  pick(level: number | null, length: number): { level: number | null; tag: PackPhase | undefined } {
    if (level === null) return { level: null, tag: undefined };
    this.advance();
    const raw = this.balance > this.thresholdMs || this.current.mode === 'raw';
    if (raw) { this.rawPieces++; this.rawBytes += length; }
    return { level: raw ? null : level, tag: this.current };
  }

  /** The level for the next piece (`pick` without the tag). */
  levelFor(level: number | null, length: number): number | null {
    return this.pick(level, length).level;
  }

  /** One extent of `length` source bytes written; `tag` as `pick` gave it. */
  written(tag: PackPhase | undefined, length: number): void {
    tag?.add(length, this.clock());
  }

  private advance(): void {
    const now = this.clock();
    if (this.probe && this.current !== this.probe) { // the probe is over: decide once its pieces are measured
      const probe = this.probe.rate();
      const ref = this.reference!.rate();
      if ((probe !== null && ref !== null) || now >= this.decideBy) this.decide(probe ?? 0, ref ?? 0, now);
      return;
    }
    if (now < this.phaseEnd && !this.firstPeriodMeasured()) return;
    if (this.current === this.probe && this.current.rate() === null && now < this.probeFullEnd) return; // a shortened probe runs until measured
    if (this.current === this.probe) { // back to the preferred mode while the probe's pieces go out
      this.startPhase(this.preferred, now, this.period);
      this.decideBy = now + this.period;
      return;
    }
    const ref = this.current.rate();
    const worthIt = this.preferred === 'raw' || (ref !== null && ref >= this.timing.minProbeRate);
    if (!worthIt) { this.startPhase(this.preferred, now, this.period); return; }
    this.reference = this.current;
    const shrink = this.preferred === 'raw' ? Math.min(Math.max(this.lastMargin, 1), MAX_PROBE_SHRINK) : 1;
    this.startPhase(this.preferred === 'compressed' ? 'raw' : 'compressed', now, this.timing.probeMs / shrink);
    this.probe = this.current;
    this.probeFullEnd = now + this.timing.probeMs;
  }

  /** In the first compressed period, before any probe: its rate already shows a link worth probing. */
  private firstPeriodMeasured(): boolean {
    if (this.decisions.length > 0 || this.probe) return false;
    const rate = this.current.rate();
    return rate !== null && rate >= this.timing.minProbeRate;
  }

  private decide(probeRate: number, referenceRate: number, now: number): void {
    const raw = this.reference!.mode === 'raw' ? referenceRate : probeRate;
    const compressed = this.reference!.mode === 'compressed' ? referenceRate : probeRate;
    const winner: PackMode = raw > compressed * PROBE_MARGIN ? 'raw' : 'compressed';
    this.lastMargin = compressed > 0 ? raw / compressed : MAX_PROBE_SHRINK;
    this.period = winner === this.preferred ? Math.min(this.period * 2, this.timing.maxPeriodMs) : this.timing.periodMs;
    this.preferred = winner;
    this.decisions.push(winner);
    this.probe = this.reference = null;
    this.startPhase(winner, now, this.period);
  }

  private startPhase(mode: PackMode, now: number, ms: number): void {
    this.current = new PackPhase(mode, this.timing.settleBytes);
    this.phaseEnd = now + ms;
  }
}
