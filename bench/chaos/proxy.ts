/**
 * An HTTP CONNECT proxy on loopback that counts the bytes senders push through it to the
 * receiver's data port: the wire bytes of every attempt of a cycle, also of a sender killed
 * half-way (its own stats die with it). The TLS inside is end to end; the proxy sees only bytes.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export class CountingProxy {
  /** Bytes from senders to the data port since the last reset. */
  dataBytes = 0;
  private readonly sockets = new Set<Socket>();
  private constructor(private readonly server: Server, readonly port: number, private readonly dataPort: () => number) {}

  static async start(dataPort: () => number): Promise<CountingProxy> {
    let self: CountingProxy | undefined;
    const server = createServer((client) => self!.handle(client));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    self = new CountingProxy(server, (server.address() as { port: number }).port, dataPort);
    return self;
  }

  get url(): string { return `http://127.0.0.1:${this.port}`; }
  reset(): void { this.dataBytes = 0; }

  private handle(client: Socket): void {
    this.sockets.add(client);
    client.once('close', () => this.sockets.delete(client));
    client.on('error', () => client.destroy());
    let head = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      head = Buffer.concat([head, d]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) { if (head.length > 8192) client.destroy(); return; }
      client.off('data', onData);
      client.pause();
      const m = /^CONNECT ([^\s:]+):(\d+) HTTP\/1\.[01]\r\n/.exec(head.subarray(0, end).toString('latin1'));
      if (!m) { client.end('HTTP/1.1 400 Bad Request\r\n\r\n'); return; }
      const port = Number(m[2]);
      const counted = port === this.dataPort();
      const up = connect(port, m[1]!, () => {
        client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        const rest = head.subarray(end + 4);
        if (rest.length) { if (counted) this.dataBytes += rest.length; up.write(rest); }
        client.on('data', (x: Buffer) => { if (counted) this.dataBytes += x.length; });
        client.pipe(up);
        up.pipe(client);
      });
      this.sockets.add(up);
      up.once('close', () => { this.sockets.delete(up); client.destroy(); });
      client.once('close', () => up.destroy());
      up.on('error', () => { client.destroy(); up.destroy(); });
    };
    client.on('data', onData);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
