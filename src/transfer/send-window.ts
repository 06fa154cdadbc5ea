/**
 * The sender's window: extents accepted from the caller that the receiver has not yet acknowledged
 * as durable, in sequence order, with a cursor at the first one not yet written to the current
 * connection. It decides what is in flight, what an ACK releases and what is written again after a
 * reconnect; it knows nothing of sockets or timers.
 *
 *   entries:  [ written ... written | unwritten ... ]     cost = sum of the entries' costs
 *               ^ oldest (lowest seq)  ^ cursor (`next()`)
 */

/** What the window tracks of an extent; the sender's own fields ride along in `E`. */
export interface WindowEntry {
  /** Sequence number, from 1, in the order the entries entered the window. */
  readonly seq: number;
  readonly disk: number;
  readonly offset: number;
  readonly length: number;
  /** Overlaps data sent earlier in this cycle: a held range then says nothing about this version. */
  readonly overwrite: boolean;
  /** Bytes it holds against the window limit. */
  cost: number;
  /** Written at least once (to any connection). */
  sent: boolean;
}

export class SendWindow<E extends WindowEntry> {
  private entries: E[] = [];
  private cursor = 0;
  private nextSeq = 1;
  private total = 0;

  /** `dropped`: told of each entry that leaves the window (acknowledged, or held after a restart). */
  constructor(readonly limit: number, private readonly dropped?: (e: E) => void) {}

  /** Bytes held (the entries' costs). */
  get cost(): number { return this.total; }
  get size(): number { return this.entries.length; }
  get empty(): boolean { return this.entries.length === 0; }
  /** Every entry is written to the current connection (and waits for its ACK). */
  get allWritten(): boolean { return this.cursor === this.entries.length; }
  /** Some entry is written to the current connection and not yet acknowledged. */
  get awaitingAck(): boolean { return this.cursor > 0; }

  /** False while an entry of `cost` would take the window over `limit` (default its own; an empty window takes anything). */
  fits(cost: number, limit = this.limit): boolean {
    return this.total === 0 || this.total + cost <= Math.min(limit, this.limit);
  }

  /** Append an entry under the next sequence number. */
  push(fields: Omit<E, 'seq' | 'sent'>): E {
    const e = { ...fields, seq: this.nextSeq++, sent: false } as E;
    this.entries.push(e);
    this.total += e.cost;
    return e;
  }

  /** The entry to write next, if any. */
  next(): E | undefined { return this.entries[this.cursor]; }

  /** `e` is still the entry to write next (no ACK or resync moved the cursor meanwhile). */
  isNext(e: E): boolean { return this.entries[this.cursor] === e; }

  /** `e` (the next entry) was written: move past it. True when it was its first transmission. */
  written(e: E): boolean {
    if (!this.isNext(e)) throw new Error(`entry ${e.seq} is not the next one to write`);
    this.cursor++;
    const first = !e.sent;
    e.sent = true;
    return first;
  }

  /** Change what `e` holds against the limit (its packed size became known). */
  reprice(e: E, cost: number): void {
    this.total += cost - e.cost;
    e.cost = cost;
  }

  /** ACK: everything up to `seq` is durable and leaves the window. */
  ack(seq: number): void {
    let k = 0;
    while (k < this.entries.length && this.entries[k]!.seq <= seq) { this.total -= this.entries[k]!.cost; k++; }
    if (k) {
      const gone = this.entries.splice(0, k);
      this.cursor = Math.max(0, this.cursor - k);
      if (this.dropped) for (const e of gone) this.dropped(e);
    }
  }

  /** The session is over without them (it failed): every entry leaves the window unsent. */
  discard(): void {
    const gone = this.entries;
    this.entries = [];
    this.cursor = 0;
    this.total = 0;
    if (this.dropped) for (const e of gone) this.dropped(e);
  }

  /**
   * A new connection: the receiver said which sequence number of this stream is durable, or
   * (`durableSeq` null: it does not know the stream, e.g. after a restart) what its store holds.
   * Entries it has are dropped; the rest is written again from the oldest.
   */
  resume(durableSeq: number | null, held: (e: E) => boolean): void {
    if (durableSeq !== null) {
      this.ack(durableSeq);
    } else {
      const keep: E[] = [];
      for (const e of this.entries) {
        if (!e.overwrite && held(e)) { this.total -= e.cost; this.dropped?.(e); } else keep.push(e);
      }
      this.entries = keep;
    }
    this.cursor = 0;
  }
}
