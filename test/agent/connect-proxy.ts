/** A small HTTP CONNECT proxy for tests, with Basic auth; it records each tunnel's target. */
import net from 'node:net';

export interface TestProxy { port: number; targets: string[]; refused: () => number; close(): void }

export function startConnectProxy(auth?: { user: string; password: string }): Promise<TestProxy> {
  const targets: string[] = [];
  let refused = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    sockets.add(client);
    client.once('close', () => sockets.delete(client));
    let head = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      head = Buffer.concat([head, d]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      client.off('data', onData);
      const lines = head.subarray(0, end).toString('latin1').split('\r\n');
      const [method, target] = lines[0]!.split(' ');
      if (method !== 'CONNECT' || !target) { client.end('HTTP/1.1 405 Method Not Allowed\r\n\r\n'); return; }
      const given = lines.find((l) => l.toLowerCase().startsWith('proxy-authorization:'))?.split(' ').pop();
      if (auth && given !== Buffer.from(`${auth.user}:${auth.password}`).toString('base64')) {
        refused++;
        client.end('HTTP/1.1 407 Proxy Authentication Required\r\n\r\n');
        return;
      }
      targets.push(target);
      const i = target.lastIndexOf(':');
      const up = net.connect(Number(target.slice(i + 1)), target.slice(0, i).replace(/^\[|\]$/g, ''), () => {
        client.write('HTTP/1.1 200 Connection established\r\n\r\n');
        const rest = head.subarray(end + 4);
        if (rest.length) up.write(rest);
        client.pipe(up);
        up.pipe(client);
      });
      sockets.add(up);
      up.once('close', () => sockets.delete(up));
      up.on('error', () => client.destroy());
      client.on('error', () => up.destroy());
    };
    client.on('data', onData);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    port: (server.address() as net.AddressInfo).port, targets, refused: () => refused,
    close: () => { for (const s of sockets) s.destroy(); server.close(); },
  })));
}
