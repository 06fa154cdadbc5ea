/**
 * Opening an NBD connection: the socket (TCP or Unix), the handshake on it (handshake.ts), then the
 * transmission phase (transmission.ts) on the same socket.
 */
import net from 'node:net';
import { NbdError } from './errors.ts';
import { handshake, type NbdHandshakeSettings } from './handshake.ts';
import { NbdConnection } from './transmission.ts';
import type { NbdTarget } from './uri.ts';

export interface NbdConnectSettings extends NbdHandshakeSettings {
  /** Whole handshake (connect, TLS, options), ms. */
  connectTimeoutMs?: number;
  /** Fail every request when the server sends nothing for this long while requests are waiting, ms. */
  requestTimeoutMs?: number;
}

export async function openNbdConnection(target: NbdTarget, settings: NbdConnectSettings = {}): Promise<NbdConnection> {
  const timeoutMs = settings.connectTimeoutMs ?? 30_000;
  const router = target.tls ? undefined : new ReadRouter();
  const raw = await openSocket(target, timeoutMs, router);
  const { sock, info, leftover } = await handshake(raw, target, settings, timeoutMs);
  const conn = new NbdConnection(sock, target, info, leftover, settings.requestTimeoutMs ?? 120_000);
  if (router) router.conn = conn;
  return conn;
}

/**
 * Lets a plain socket read READ payloads straight into the request's buffer (net's `onread`),
 * saving a copy and an allocation per socket read. Until a connection takes over, bytes are
 * re-emitted as 'data' for the handshake. TLS sockets keep ordinary 'data' events.
 */
class ReadRouter {
  private readonly scratch = Buffer.allocUnsafe(256 << 10);
  private direct = false;
  sock: net.Socket | undefined;
  conn: NbdConnection | undefined;
  readonly buffer = (): Buffer => {
    const t = this.conn?.directTarget();
    this.direct = t !== undefined;
    return t ?? this.scratch;
  };
  readonly callback = (n: number): void => {
    if (this.direct) this.conn!.advanceDirect(n);
    else if (this.conn) this.conn.feed(this.scratch.subarray(0, n));
    else this.sock?.emit('data', Buffer.from(this.scratch.subarray(0, n)));
  };
}

function openSocket(target: NbdTarget, timeoutMs: number, router?: ReadRouter): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const onread: net.OnReadOpts | undefined = router
      ? { buffer: router.buffer, callback: (n: number) => { router.callback(n); return true; } }
      : undefined;
    const sock = target.socketPath
      ? net.createConnection({ path: target.socketPath, ...(onread ? { onread } : {}) } as net.IpcNetConnectOpts)
      : net.createConnection({ host: target.host!, port: target.port, ...(onread ? { onread } : {}) } as net.TcpNetConnectOpts);
    if (router) router.sock = sock;
    const t = setTimeout(() => { sock.destroy(); reject(new NbdError(`connecting to ${target.display} timed out after ${timeoutMs} ms`, { transient: true })); }, timeoutMs);
    sock.once('connect', () => { clearTimeout(t); sock.setNoDelay(true); resolve(sock); });
    sock.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      reject(new NbdError(`cannot connect to the NBD server at ${target.display}: ${e.code ?? e.message}`, { transient: true, cause: e }));
    });
  });
}
