/**
 * A TCP proxy for link-fault tests: listens on loopback, forwards every connection to one target and,
 * on command, breaks the connections it carries. It works below TLS, so a pinned certificate still
 * pins the target's. No randomness: faults happen when a test calls them, or at byte counts it names.
 *
 * Faults (each applies to the connections open when it is called; new connections are carried
 * normally unless `cutNext` armed them):
 * - `drop()`      both sides closed (FIN);
 * - `reset()`     both sides reset (RST, `socket.resetAndDestroy()`);
 * - `stall()`     nothing forwarded either way, both sockets stay open; what arrives is read (counted)
 *                 and discarded, so a peer closing its side closes the other (a black-holing middlebox);
 * - `halfOpen()`  the target's side is closed, the client's side stays open and is neither read nor
 *                 written: the client sees a live connection that has gone silent (a peer that vanished);
 *                 `halfOpen('server')` the other way round: the target keeps the silent side;
 * - `throttle(n)` at most n bytes/s each way on every connection, current and new (null: no limit);
 * - `faultNext({fault, dir, after, count})` the next `count` new connections meet `fault` ('cut': both
 *                 sides closed, or 'reset', 'stall', 'half-open' as above) once `after` bytes went in
 *                 direction `dir` (`'tls-record'`: the first TLS record, e.g. the ClientHello when dir
 *                 is 'up'; `plus` n: n bytes more, e.g. into the first request after the handshake);
 *                 the bytes up to that point are forwarded. `cutNext` is the 'cut' case.
 * Counters: bytes read from the client (`up`) and from the target (`down`), per connection and in total.
 */
import net from 'node:net';

export type Direction = 'up' | 'down';

export interface ConnectionStats {
  readonly id: number;
  up: number;
  down: number;
  /** The fault that ended or froze it, if any. */
  fault: string | null;
  closed: boolean;
}

export type ArmedFault = 'cut' | 'reset' | 'stall' | 'half-open';
interface CutSpec { fault: ArmedFault; dir: Direction; after: number | 'tls-record'; plus: number }

/** Bytes one way of one connection: counted when read, forwarded unless held, metered when throttled. */
class Lane {
  private queue: Buffer[] = [];
  private queued = 0;
  private tokens = 0;
  private lastRefill = Date.now();
  private timer: NodeJS.Timeout | null = null;
  held = false;
  /** Bytes read from `from` (counted whether forwarded or not). */
  read = 0;
  private cutAt: number | null = null;
  private head = Buffer.alloc(0);
  private draining = false;
  private discard = false;

  constructor(private readonly from: net.Socket, private readonly to: net.Socket, private readonly rate: () => number | null,
    private readonly count: (n: number) => void, private readonly cut: CutSpec | null, private readonly onCut: () => void) {
    from.on('data', (chunk: Buffer) => this.take(chunk));
  }

  private take(chunk: Buffer): void {
    this.read += chunk.length;
    this.count(chunk.length);
    if (this.cut && this.cutAt === null) {
      if (typeof this.cut.after === 'number') this.cutAt = this.cut.after;
      else {
        // a TLS record: 1 byte type, 2 bytes version, 2 bytes length, then the body
        this.head = Buffer.concat([this.head, chunk.subarray(0, 5 - this.head.length)]);
        if (this.head.length === 5) this.cutAt = 5 + this.head.readUInt16BE(3) + this.cut.plus;
      }
    }
    if (this.discard) return;
    this.queue.push(chunk);
    this.queued += chunk.length;
    this.pump();
  }

  /** Forward what is queued, as far as holding, the rate and a cut allow. */
  pump(): void {
    if (this.held || this.draining || this.to.destroyed) return;
    const rate = this.rate();
    while (this.queue.length) {
      let chunk = this.queue[0]!;
      if (rate !== null) {
        const now = Date.now();
        this.tokens = Math.min(rate, this.tokens + ((now - this.lastRefill) / 1000) * rate);
        this.lastRefill = now;
        if (this.tokens < 1) { this.schedule(Math.ceil((1 - this.tokens) / rate * 1000)); break; }
        const n = Math.min(chunk.length, Math.floor(this.tokens));
        if (n < chunk.length) { this.queue[0] = chunk.subarray(n); chunk = chunk.subarray(0, n); } else this.queue.shift();
        this.tokens -= n;
      } else this.queue.shift();
      this.queued -= chunk.length;
      if (this.cutAt !== null) {
        const forwarded = this.read - this.queued - chunk.length;
        if (forwarded + chunk.length >= this.cutAt) {
          this.to.write(chunk.subarray(0, this.cutAt - forwarded), () => this.onCut());
          this.queue = []; this.queued = 0; this.held = true;
          this.from.pause();
          return;
        }
      }
      if (!this.to.write(chunk)) {
        this.from.pause();
        this.draining = true;
        this.to.once('drain', () => { this.draining = false; this.pump(); });
        return;
      }
    }
    // read more only while little waits here (a throttled lane pushes back on its sender)
    if (this.queued < 256 * 1024 && !this.held) this.from.resume(); else this.from.pause();
  }

  private schedule(ms: number): void {
    if (this.timer) return;
    this.from.pause();
    this.timer = setTimeout(() => { this.timer = null; this.pump(); }, Math.max(1, ms));
  }

  /** Stop forwarding and reading; what arrives meanwhile stays queued. */
  hold(): void {
    this.held = true;
    this.from.pause();
  }

  /** Stop forwarding; read on and discard. */
  blackhole(): void {
    this.held = true;
    this.queue = []; this.queued = 0;
    this.discard = true;
    this.from.resume();
  }

  stop(): void { if (this.timer) clearTimeout(this.timer); this.timer = null; this.held = true; }
}

class Carried {
  readonly stats: ConnectionStats;
  private readonly up: Lane;
  private readonly down: Lane;
  /** Half-open: this side stays open when the other closes. */
  private kept: 'client' | 'server' | null = null;

  constructor(id: number, readonly client: net.Socket, readonly server: net.Socket, proxy: FaultProxy, cut: CutSpec | null) {
    this.stats = { id, up: 0, down: 0, fault: null, closed: false };
    const rate = () => proxy.rate;
    const onCut = () => {
      if (cut?.fault === 'reset') this.reset();
      else if (cut?.fault === 'stall') this.stall();
      else if (cut?.fault === 'half-open') this.halfOpen();
      else { this.mark('cut'); this.client.destroy(); this.server.destroy(); }
    };
    client.pause();
    this.up = new Lane(client, server, rate, (n) => { this.stats.up += n; proxy.counted('up', n); }, cut?.dir === 'up' ? cut : null, onCut);
    this.down = new Lane(server, client, rate, (n) => { this.stats.down += n; proxy.counted('down', n); }, cut?.dir === 'down' ? cut : null, onCut);
    server.once('connect', () => { this.up.pump(); });
    const closed = () => {
      if (this.kept && !this[this.kept].destroyed) return;
      this.stats.closed = true;
      this.up.stop(); this.down.stop();
      this.client.destroy(); this.server.destroy();
    };
    for (const s of [client, server]) {
      s.on('error', () => undefined);
      s.on('close', closed);
      s.on('end', () => { if (this.kept) return; (s === client ? server : client).end(); });
    }
  }

  drop(): void { this.mark('drop'); this.client.destroy(); this.server.destroy(); }
  reset(): void {
    this.mark('reset');
    for (const s of [this.client, this.server]) {
      try { if (!s.destroyed) s.resetAndDestroy(); } catch { s.destroy(); }
    }
  }
  stall(): void { this.mark('stall'); this.up.blackhole(); this.down.blackhole(); }
  halfOpen(keep: 'client' | 'server' = 'client'): void {
    this.mark(keep === 'client' ? 'half-open' : 'half-open-server');
    this.kept = keep;
    this.up.hold(); this.down.hold();
    (keep === 'client' ? this.server : this.client).destroy();
  }
  get keptServer(): boolean { return this.kept === 'server' && !this.server.destroyed; }
  pumpAll(): void { this.up.pump(); this.down.pump(); }
  private mark(f: string): void { if (!this.stats.closed && this.stats.fault === null) this.stats.fault = f; }
  get open(): boolean { return !this.client.destroyed; }
}

export class FaultProxy {
  rate: number | null = null;
  readonly totals = { up: 0, down: 0 };
  private readonly carried: Carried[] = [];
  private readonly armed: CutSpec[] = [];
  private watchers: { dir: Direction; at: number; resolve: () => void }[] = [];
  private nextId = 1;

  private constructor(private readonly server: net.Server, readonly target: { host: string; port: number }) {}

  static async start(target: { host?: string; port: number }): Promise<FaultProxy> {
    const t = { host: target.host ?? '127.0.0.1', port: target.port };
    const server = net.createServer({ pauseOnConnect: true });
    const p = new FaultProxy(server, t);
    server.on('connection', (client) => p.carry(client));
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', () => resolve()); });
    return p;
  }

  get port(): number { return (this.server.address() as net.AddressInfo).port; }
  get address(): string { return `127.0.0.1:${this.port}`; }
  /** Every connection carried so far, in order. */
  get connections(): readonly ConnectionStats[] { return this.carried.map((c) => c.stats); }

  private carry(client: net.Socket): void {
    const server = net.connect({ host: this.target.host, port: this.target.port });
    this.carried.push(new Carried(this.nextId++, client, server, this, this.armed.shift() ?? null));
  }

  /** @internal Lanes report what they read. */
  counted(dir: Direction, n: number): void {
    this.totals[dir] += n;
    const due = this.watchers.filter((w) => w.dir === dir && this.totals[dir] >= w.at);
    if (!due.length) return;
    this.watchers = this.watchers.filter((w) => !due.includes(w));
    for (const w of due) w.resolve();
  }

  /** Resolves once `bytes` in total went `dir` through this proxy (all connections together). */
  reached(dir: Direction, bytes: number): Promise<void> {
    if (this.totals[dir] >= bytes) return Promise.resolve();
    return new Promise((resolve) => this.watchers.push({ dir, at: bytes, resolve }));
  }

  private live(): Carried[] { return this.carried.filter((c) => c.open && c.stats.fault === null); }
  /** The connections a fault applies to: every open one not already faulted; returns their count. */
  drop(): number { const l = this.live(); for (const c of l) c.drop(); return l.length; }
  reset(): number { const l = this.live(); for (const c of l) c.reset(); return l.length; }
  stall(): number { const l = this.live(); for (const c of l) c.stall(); return l.length; }
  halfOpen(keep: 'client' | 'server' = 'client'): number { const l = this.live(); for (const c of l) c.halfOpen(keep); return l.length; }
  /** Target-side sockets kept open by `halfOpen('server')` that the target has not closed yet. */
  get keptServers(): number { return this.carried.filter((c) => c.keptServer).length; }
  throttle(bytesPerSecond: number | null): void {
    this.rate = bytesPerSecond;
    for (const c of this.carried) if (c.open) c.pumpAll();
  }
  /** Arm the next `count` (default 1) new connections to meet `fault` once `after` bytes went `dir`. */
  faultNext(o: { fault: ArmedFault; dir: Direction; after: number | 'tls-record'; plus?: number; count?: number }): void {
    for (let i = 0; i < (o.count ?? 1); i++) this.armed.push({ fault: o.fault, dir: o.dir, after: o.after, plus: o.plus ?? 0 });
  }
  /** Arm the next `count` new connections to be closed once `after` bytes went `dir`. */
  cutNext(o: { dir: Direction; after: number | 'tls-record'; count?: number }): void { this.faultNext({ ...o, fault: 'cut' }); }
  /** Connections armed and not yet opened. */
  get armedCount(): number { return this.armed.length; }

  async close(): Promise<void> {
    for (const c of this.carried) { c.client.destroy(); c.server.destroy(); }
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
