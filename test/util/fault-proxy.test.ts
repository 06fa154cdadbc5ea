import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import tls from 'node:tls';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { FaultProxy } from './fault-proxy.ts';

/** A target that records what each connection received and echoes it back when asked. */
async function target(o: { echo: boolean }): Promise<{ port: number; got: Buffer[]; closed: number[]; server: net.Server }> {
  const got: Buffer[] = [];
  const closed: number[] = [];
  const server = net.createServer((s) => {
    const i = got.push(Buffer.alloc(0)) - 1;
    s.on('data', (d: Buffer) => { got[i] = Buffer.concat([got[i]!, d]); if (o.echo) s.write(d); });
    s.on('error', () => undefined);
    s.on('close', () => closed.push(i));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { port: (server.address() as net.AddressInfo).port, got, closed, server };
}

const servers: net.Server[] = [];
const proxies: FaultProxy[] = [];
after(async () => {
  for (const p of proxies) await p.close();
  for (const s of servers) s.close();
});

async function setup(echo = true) {
  const t = await target({ echo });
  servers.push(t.server);
  const p = await FaultProxy.start({ port: t.port });
  proxies.push(p);
  return { t, p };
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => { const s = net.connect(port, '127.0.0.1', () => resolve(s)); s.once('error', reject); });
}

/** Waits for 'close' and tells whether an error came before it. */
function closeOf(s: net.Socket): Promise<{ error: string | null; ms: number }> {
  const t0 = Date.now();
  let error: string | null = null;
  s.on('error', (e: NodeJS.ErrnoException) => { error = e.code ?? e.message; });
  s.resume(); // an end is seen only once what came before it was read
  return new Promise((r) => s.once('close', () => r({ error, ms: Date.now() - t0 })));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const until = async (f: () => boolean, ms = 5000) => { const end = Date.now() + ms; while (!f()) { if (Date.now() > end) throw new Error('timed out'); await sleep(10); } };

test('forwards both ways unchanged and counts the bytes each way per connection', async () => {
  const { t, p } = await setup();
  const c = await connect(p.port);
  const data = randomBytes(3 << 20);
  const back: Buffer[] = [];
  c.on('data', (d: Buffer) => back.push(d));
  c.write(data);
  await until(() => Buffer.concat(back).length === data.length);
  assert.ok(Buffer.concat(back).equals(data));
  assert.ok(t.got[0]!.equals(data));
  assert.deepEqual({ up: p.connections[0]!.up, down: p.connections[0]!.down }, { up: data.length, down: data.length });
  assert.deepEqual(p.totals, { up: data.length, down: data.length });
  await p.reached('up', data.length); // already reached: resolves at once
  c.destroy();
});

test('drop closes both sides without an error; reset makes the client see ECONNRESET', async () => {
  const { t, p } = await setup();
  const c1 = await connect(p.port);
  c1.write('x');
  await until(() => t.got.length === 1 && t.got[0]!.length === 1);
  const gone1 = closeOf(c1);
  assert.equal(p.drop(), 1);
  assert.equal((await gone1).error, null);
  await until(() => t.closed.includes(0));
  assert.equal(p.connections[0]!.fault, 'drop');

  const c2 = await connect(p.port);
  c2.write('y');
  await until(() => t.got.length === 2 && t.got[1]!.length === 1);
  const gone2 = closeOf(c2);
  assert.equal(p.reset(), 1);
  assert.equal((await gone2).error, 'ECONNRESET');
  await until(() => t.closed.includes(1));
  // a new connection after the faults is carried normally
  const c3 = await connect(p.port);
  c3.write('z');
  await until(() => t.got.length === 3 && t.got[2]!.equals(Buffer.from('z')));
  c3.destroy();
});

test('stall forwards nothing either way and keeps both sockets open', async () => {
  const { t, p } = await setup();
  const c = await connect(p.port);
  let back = 0;
  c.on('data', (d: Buffer) => { back += d.length; });
  c.write('before');
  await until(() => back === 6);
  assert.equal(p.stall(), 1);
  c.write(randomBytes(100_000));
  await sleep(400);
  assert.equal(t.got[0]!.length, 6, 'nothing reached the target after the stall');
  assert.equal(back, 6);
  assert.ok(!c.destroyed && !t.closed.includes(0), 'both sides still open');
  await until(() => p.connections[0]!.up === 6 + 100_000); // read and discarded: the client's writes do not back up
  const gone = closeOf(c);
  c.destroy();
  await gone;
  await until(() => t.closed.includes(0)); // the client closing its side ends the target's too
});

test('half-open: the target side is closed, the client keeps a silent, open connection', async () => {
  const { t, p } = await setup();
  const c = await connect(p.port);
  let back = 0;
  let ended = false;
  c.on('data', (d: Buffer) => { back += d.length; });
  c.on('end', () => { ended = true; });
  c.write('hello');
  await until(() => back === 5);
  assert.equal(p.halfOpen(), 1);
  await until(() => t.closed.includes(0));
  // the client writes on into a connection nobody reads: its kernel buffers fill, nothing comes back
  let written = 0;
  for (let i = 0; i < 64; i++) { c.write(Buffer.alloc(64 * 1024)); written += 64 * 1024; }
  await sleep(500);
  assert.ok(!c.destroyed && !ended, 'the client sees neither an end nor an error');
  assert.equal(back, 5);
  assert.ok(c.writableLength > 0, `the client's writes back up (${c.writableLength} of ${written} bytes still queued)`);
  assert.equal(p.connections[0]!.fault, 'half-open');
  c.destroy();
});

test('throttle limits each direction to the given rate, and lifting it restores full speed', async () => {
  const { p } = await setup();
  p.throttle(256 * 1024);
  const c = await connect(p.port);
  const data = randomBytes(256 * 1024);
  let back = 0;
  c.on('data', (d: Buffer) => { back += d.length; });
  const t0 = Date.now();
  c.write(data);
  await until(() => back === data.length, 10_000);
  const ms = Date.now() - t0;
  assert.ok(ms >= 900, `256 KiB each way at 256 KiB/s took ${ms} ms`);
  p.throttle(null);
  const t1 = Date.now();
  c.write(randomBytes(4 << 20));
  await until(() => back === data.length + (4 << 20), 10_000);
  assert.ok(Date.now() - t1 < 8000, 'unthrottled again (at the old rate 4 MiB would take 16 s)');
  c.destroy();
});

test('cutNext cuts a TLS handshake right after the ClientHello, and a byte count exactly', async (tt) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-proxy-'));
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=proxy-test',
      '-keyout', join(dir, 'k.pem'), '-out', join(dir, 'c.pem'), '-days', '1'], { stdio: 'ignore' });
    // a recording target: exactly the ClientHello record gets through
    const { t: rec, p: p1 } = await setup(false);
    p1.cutNext({ dir: 'up', after: 'tls-record' });
    await new Promise<void>((resolve) => {
      const c = tls.connect({ port: p1.port, host: '127.0.0.1', rejectUnauthorized: false });
      c.on('error', () => resolve());
      c.on('close', () => resolve());
    });
    await until(() => rec.closed.includes(0));
    const hello = rec.got[0]!;
    assert.equal(hello[0], 0x16, 'a handshake record');
    assert.equal(hello[5], 0x01, 'holding a ClientHello');
    assert.equal(hello.length, 5 + hello.readUInt16BE(3), 'exactly one TLS record went through');
    assert.equal(p1.connections[0]!.fault, 'cut');

    // a real TLS server: the cut handshake fails on the client, the next (unarmed) connection completes
    const server = tls.createServer({ key: readFileSync(join(dir, 'k.pem')), cert: readFileSync(join(dir, 'c.pem')) }, (s) => { s.end('hi'); });
    server.on('tlsClientError', () => undefined);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    servers.push(server);
    const p = await FaultProxy.start({ port: (server.address() as net.AddressInfo).port });
    proxies.push(p);
    p.cutNext({ dir: 'up', after: 'tls-record' });
    const err = await new Promise<string>((resolve) => {
      const c = tls.connect({ port: p.port, host: '127.0.0.1', rejectUnauthorized: false });
      c.on('secureConnect', () => resolve('connected'));
      c.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    });
    tt.diagnostic(`handshake cut after the ClientHello: ${err}`);
    assert.notEqual(err, 'connected');
    // the next connection is not armed: the handshake completes
    const ok = await new Promise<string>((resolve) => {
      const c = tls.connect({ port: p.port, host: '127.0.0.1', rejectUnauthorized: false });
      c.on('data', (d: Buffer) => { resolve(d.toString()); c.destroy(); });
      c.on('error', (e) => resolve(e.message));
    });
    assert.equal(ok, 'hi');

    const { t, p: p2 } = await setup(false);
    p2.cutNext({ dir: 'up', after: 1000 });
    const c = await connect(p2.port);
    const gone = closeOf(c);
    c.write(randomBytes(5000));
    await gone;
    await until(() => t.closed.includes(0));
    assert.equal(t.got[0]!.length, 1000);
  } finally { rmSync(dir, { recursive: true, force: true }); }
});

test('faultNext stalls or resets a new connection at a byte count', async () => {
  const { t, p } = await setup(false);
  p.faultNext({ fault: 'stall', dir: 'up', after: 1000 });
  p.faultNext({ fault: 'reset', dir: 'up', after: 10 });
  const c1 = await connect(p.port);
  c1.write(randomBytes(5000));
  await until(() => p.connections[0]?.up === 5000);
  await sleep(200);
  assert.equal(t.got[0]!.length, 1000);
  assert.ok(!c1.destroyed && !t.closed.includes(0), 'stalled, not closed');
  assert.equal(p.connections[0]!.fault, 'stall');
  const c2 = await connect(p.port);
  const gone = closeOf(c2);
  c2.write(randomBytes(100));
  assert.equal((await gone).error, 'ECONNRESET');
  await until(() => t.got.length === 2 && t.closed.includes(1));
  assert.equal(t.got[1]!.length, 10);
  assert.equal(p.armedCount, 0);
  c1.destroy();
});
