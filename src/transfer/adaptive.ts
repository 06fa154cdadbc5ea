/**
 * Compression that never slows the link: the sender's pump reports, for each extent it writes, how
 * long it waited for that extent's compression and how long it waited for the network (socket
 * drain, bandwidth tokens). While compression is what it waits for, the link is faster than the
 * codec workers: new pieces then go out uncompressed (still hashed), so a fast link carries at least
 * the uncompressed rate. When the network is what it waits for (a slow or rate-limited link), every
 * piece is compressed.
 */
export class CompressionGovernor {
  /** Decayed balance of (waited for packing − waited for the network), in ms per written extent. */
  private balance = 0;
  /** Pieces packed uncompressed by this rule, and their bytes. */
  rawPieces = 0;
  rawBytes = 0;

  /** ms of pump idling per extent above which compression counts as the bottleneck. */
  constructor(private readonly thresholdMs = 0.2, private readonly decay = 0.8) {}

  /** One extent written: ms the pump waited for its packing, and for the network before it. */
  observe(waitedForPackMs: number, waitedForNetworkMs: number): void {
    this.balance = this.decay * this.balance + (1 - this.decay) * (waitedForPackMs - waitedForNetworkMs);
  }

  /** The level to pack the next piece of `length` bytes with: `level`, or null (uncompressed). */
  levelFor(level: number | null, length: number): number | null {
    if (level === null || this.balance <= this.thresholdMs) return level;
    this.rawPieces++;
    this.rawBytes += length;
    return null;
  }
}
