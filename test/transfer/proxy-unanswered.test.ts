// A proxy that closes the connection without answering CONNECT (its upstream, the receiver, is
// down), or answers 502/503/504, is a failure the sender retries, not a hang: before, the tunnel's
// promise never settled and the agent exited 13 ("unsettled top-level await") when a receiver was
// killed under it (found by the kill -9 matrix, bench/chaos).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:net';
import { connectPinned, ConnectError } from '../../src/transfer/connect.ts';
import { isTransient } from '../../src/util/errors.ts';

async function listen(s: Server): Promise<number> {
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return (s.address() as { port: number }).port;
}

const cases: [string, (sock: import('node:net').Socket) => void][] = [
  ['closes the connection unanswered', (sock) => sock.once('data', () => sock.end())],
  ['answers 502 Bad Gateway', (sock) => sock.once('data', () => sock.end('HTTP/1.1 502 Bad Gateway\r\n\r\n'))],
  ['answers 503 Service Unavailable', (sock) => sock.once('data', () => sock.end('HTTP/1.1 503 Service Unavailable\r\n\r\n'))],
];

for (const [what, behave] of cases) {
  test(`a proxy that ${what} fails the connect with a transient error`, { timeout: 10_000 }, async (t) => {
    const proxy = createServer(behave);
    t.after(() => proxy.close());
    const port = await listen(proxy);
    const e = await connectPinned({ host: '127.0.0.1', port: 1, fingerprint: 'ab'.repeat(32), proxy: { host: '127.0.0.1', port }, timeoutMs: 60_000 })
      .then(() => null, (x: unknown) => x);
    assert.ok(e instanceof ConnectError, `a ConnectError: ${String(e)}`);
    assert.equal(e.code, 'RECEIVER_UNREACHABLE');
    assert.ok(isTransient(e), 'retried by the reconnect loop');
    assert.match(e.message, /proxy 127\.0\.0\.1:\d+/);
  });
}

test('a proxy that refuses CONNECT by policy (403) stays a refusal', async (t) => {
  const proxy = createServer((sock) => sock.once('data', () => sock.end('HTTP/1.1 403 Forbidden\r\n\r\n')));
  t.after(() => proxy.close());
  const port = await listen(proxy);
  const e = await connectPinned({ host: '127.0.0.1', port: 1, fingerprint: 'ab'.repeat(32), proxy: { host: '127.0.0.1', port } }).then(() => null, (x: unknown) => x);
  assert.equal((e as { code?: string }).code, 'PROXY_REFUSED');
  assert.equal(isTransient(e), false);
});
