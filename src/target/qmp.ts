/**
 * A small QMP (QEMU Machine Protocol) client over one connected unix socket: the greeting,
 * qmp_capabilities, then one command at a time (screendump, query-status, quit); events are kept.
 */
import type { Socket } from 'node:net';
import { CodedError } from '../util/errors.ts';

interface Pending { resolve: (v: unknown) => void; reject: (e: Error) => void }

export class QmpClient {
  private buf = '';
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private greeting: Pending | null = null;
  private closed = false;
  readonly events: { event: string; data?: unknown }[] = [];

  private constructor(private readonly sock: Socket) {}

  /** Takes a socket QEMU has connected (or that connects to QEMU) and negotiates capabilities. */
  static async start(sock: Socket, timeoutMs = 30_000): Promise<QmpClient> {
    const q = new QmpClient(sock);
    const greeted = new Promise<void>((resolve, reject) => { q.greeting = { resolve: () => resolve(), reject }; });
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => q.onData(d));
    sock.on('error', (e) => q.fail(new Error(`QMP socket error: ${e.message}`)));
    sock.on('close', () => q.fail(new Error('QMP connection closed (QEMU exited)')));
    await withTimeout(greeted, timeoutMs, 'QMP greeting');
    await q.execute('qmp_capabilities', undefined, timeoutMs);
    return q;
  }

  /** Runs one command; rejects with QEMU's error description. */
  execute(command: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<unknown> {
    if (this.closed) return Promise.reject(new Error('QMP connection closed (QEMU exited)'));
    const id = this.nextId++;
    const p = new Promise<unknown>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    this.sock.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id })}\n`);
    return withTimeout(p, timeoutMs, `QMP ${command}`).finally(() => this.pending.delete(id));
  }

  /** Writes the VGA console to a PNG file (QEMU ≥ 7.1). */
  async screendump(file: string): Promise<void> {
    await this.execute('screendump', { filename: file, format: 'png' });
  }

  async status(): Promise<string> {
    return ((await this.execute('query-status')) as { status: string }).status;
  }

  /** Asks QEMU to exit; the reply may not come before the socket closes. */
  async quit(): Promise<void> {
    await this.execute('quit', undefined, 5000).catch(() => undefined);
  }

  close(): void {
    this.closed = true;
    this.sock.destroy();
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: { QMP?: unknown; return?: unknown; error?: { class: string; desc: string }; event?: string; data?: unknown; id?: number };
      try { msg = JSON.parse(line); } catch { continue; }
      if (msg.event) { this.events.push({ event: msg.event, data: msg.data }); continue; }
      if (msg.QMP) { this.greeting?.resolve(undefined); this.greeting = null; continue; }
      const p = msg.id === undefined ? undefined : this.pending.get(msg.id);
      if (!p) continue;
      if (msg.error) p.reject(new CodedError('QMP_ERROR', `${msg.error.class}: ${msg.error.desc}`));
      else p.resolve(msg.return ?? msg.QMP);
    }
  }

  private fail(e: Error): void {
    this.closed = true;
    this.greeting?.reject(e);
    this.greeting = null;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([p, new Promise<never>((_, reject) => { t = setTimeout(() => reject(new Error(`${what}: no answer in ${ms / 1000} s`)), ms); })])
    .finally(() => clearTimeout(t));
}
