import type { Duplex } from 'node:stream';

/** Exact-length reads during option negotiation, before the reply parser takes the socket over. */
export class HandshakeReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;
  private sock: Duplex | undefined;

  private readonly onData = (b: Buffer): void => {
    this.chunks.push(b);
    this.have += b.length;
    this.pump();
  };
  private readonly onEnd = (): void => this.fail(new Error('the server closed the connection during negotiation'));
  private readonly onError = (e: Error): void => this.fail(e);

  attach(sock: Duplex): void {
    this.sock = sock;
    this.failure = undefined;
    sock.on('data', this.onData);
    sock.on('end', this.onEnd);
    sock.on('close', this.onEnd);
    sock.on('error', this.onError);
  }

  /** Stops listening; returns bytes received but not consumed (must be none at a protocol boundary). */
  detach(): Buffer {
    const s = this.sock;
    if (s) {
      s.off('data', this.onData);
      s.off('end', this.onEnd);
      s.off('close', this.onEnd);
      s.off('error', this.onError);
    }
    this.sock = undefined;
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.have = 0;
    return rest;
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new Error('concurrent handshake reads'));
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.pump();
    });
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(e);
  }

  private pump(): void {
    const w = this.waiter;
    if (!w || this.have < w.n) return;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = all.subarray(0, w.n);
    const rest = all.subarray(w.n);
    this.chunks = rest.length ? [rest] : [];
    this.have = rest.length;
    this.waiter = undefined;
    w.resolve(out);
  }
}
