/**
 * One data connection of a cycle session (port 8703): pinned TLS, HELLO, then READY with the last
 * durable sequence number of the stream. Afterwards the session writes its frames through it, and
 * it reports ACKs, ERROR frames and its own end.
 */
import type { TLSSocket } from 'node:tls';
import { ConnectError, connectPinned } from './connect.ts';
import { RemoteError, type ControlTarget } from './control-client.ts';
import type { HelloFrame, SyncFrame } from './contract.ts';
import { FRAME, FrameAssembler, MAX_JSON_FRAME, encodeJsonFrame, parseJsonBody, type WireError } from './protocol.ts';
import { linkTimeouts } from './link-timeouts.ts';

export interface DataLinkEvents {
  /** ACK: everything up to `seq` is durable (an ACK without a number is only a sign of life). */
  ack(seq: number | undefined): void;
  /** The receiver refused something with an ERROR frame (it closes the connection next). */
  remoteError(e: RemoteError): void;
  /** The connection is gone (after READY; before it, `open` rejects). */
  lost(link: DataLink, e?: Error): void;
}

export class DataLink {
  /** The last sign of life of the receiver on this connection (READY or ACK). */
  private lastHeard = Date.now();
  private opened = false;

  private constructor(private readonly s: TLSSocket, private durable: number | null) {}

  /** Null: the receiver does not know this stream (a new stream, or the receiver restarted). */
  get durableSeq(): number | null { return this.durable; }

  /** Connect and say HELLO; resolves once the receiver is READY, rejects on an ERROR frame or a lost connection. */
  static async open(target: ControlTarget & { dataPort: number }, hello: HelloFrame, on: DataLinkEvents): Promise<DataLink> {
    const timeouts = linkTimeouts(target.timeouts);
    const s = await connectPinned({ host: target.host, port: target.dataPort, fingerprint: target.fingerprint, proxy: target.proxy, acceptPin: target.acceptPin, timeoutMs: timeouts.connectMs });
    s.setNoDelay(true);
    const link = new DataLink(s, null);
    const reader = new FrameAssembler(MAX_JSON_FRAME + 5);
    const ready = new Promise<void>((resolve, reject) => {
      const onFrame = (type: number, body: Buffer) => {
        const msg = parseJsonBody(body);
        if (type === FRAME.READY) {
          link.durable = typeof msg.durableSeq === 'number' ? msg.durableSeq : null;
          resolve();
        } else if (type === FRAME.ACK) {
          link.lastHeard = Date.now();
          on.ack(typeof msg.seq === 'number' ? msg.seq : undefined);
        } else if (type === FRAME.ERROR) {
          const e = new RemoteError(0, msg as unknown as WireError);
          reject(e);
          on.remoteError(e);
        }
      };
      s.on('data', (chunk: Buffer) => {
        reader.push(chunk);
        try {
          for (let f = reader.next(); f; f = reader.next()) onFrame(f.type, f.body);
        } catch (e) { s.destroy(e as Error); }
      });
      const gone = (e?: Error) => {
        reject(e ?? new ConnectError('receiver closed the data connection'));
        if (link.opened) on.lost(link, e);
      };
      s.on('error', (e) => gone(e));
      s.on('close', () => gone());
    });
    s.write(encodeJsonFrame(FRAME.HELLO, hello));
    // a connection that goes silent after the handshake (stalled, half-open) would otherwise wait here for ever
    const noReady = setTimeout(() => s.destroy(new ConnectError(`receiver ${target.host}:${target.dataPort} did not answer HELLO within ${timeouts.ackMs} ms (timeout ackMs)`)), timeouts.ackMs);
    try { await ready; } finally { clearTimeout(noReady); }
    link.opened = true;
    link.lastHeard = Date.now();
    return link;
  }

  /** False when the socket buffers it (see `writableLength`, `drained`). */
  write(b: Buffer): boolean { return this.s.write(b); }
  get writableLength(): number { return this.s.writableLength; }
  /** A write returned false and 'drain' has not come yet. */
  get needsDrain(): boolean { return this.s.writableNeedDrain; }
  /** Resolves once the socket drained, or closed. */
  drained(): Promise<void> {
    const s = this.s;
    return new Promise<void>((r) => { const done = () => { s.off('drain', done); s.off('close', done); r(); }; s.on('drain', done); s.on('close', done); });
  }

  /** Ask for an ACK once everything written so far is durable. */
  sync(token: number): void { this.s.write(encodeJsonFrame(FRAME.SYNC, { token } satisfies SyncFrame)); }

  /** ms since the receiver last spoke on this connection. */
  silentMs(now = Date.now()): number { return now - this.lastHeard; }

  /** Close after what is written (commit). */
  end(): void { this.s.end(); }
  /** Drop the connection now. */
  destroy(): void { this.s.destroy(); }
}
