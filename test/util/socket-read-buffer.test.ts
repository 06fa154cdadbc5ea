import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { loadOrCreateTls } from '../../src/receiver/identity.ts';
import { canReadIntoBuffer, readIntoBuffer, readIntoTargets } from '../../src/util/socket-read-buffer.ts';
import { FrameAssembler } from '../../src/transfer/protocol.ts';

const dir = await mkdtemp(join(tmpdir(), 'vmlift-readbuf-'));
after(() => rm(dir, { recursive: true, force: true }));
const { tls: id } = await loadOrCreateTls(dir);

/** A TLS server whose connection handler gets the socket; a client that sends `payload` in 1 MiB writes then ends. */
async function transfer(payload: Buffer, onSocket: (s: tls.TLSSocket) => Promise<Buffer>): Promise<Buffer> {
  let result!: Promise<Buffer>;
  const server = tls.createServer({ key: id.key, cert: id.cert }, (s) => { result = onSocket(s); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const c = tls.connect({ port: (server.address() as AddressInfo).port, host: '127.0.0.1', rejectUnauthorized: false });
  await new Promise<void>((r) => c.once('secureConnect', r));
  for (let at = 0; at < payload.length; at += 1 << 20) {
    if (!c.write(payload.subarray(at, at + (1 << 20)))) await new Promise((r) => c.once('drain', r));
  }
  c.end();
  c.resume();
  await new Promise((r) => c.once('close', r));
  server.close();
  return result;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

test('this Node lets a TLS server socket read into one reused buffer (the receiver depends on it for speed)', () => {
  assert.equal(canReadIntoBuffer(), true, 'Node changed the onread internals: the receiver falls back to data events (slower, more GC)');
});

test('bytes arrive intact, in order, with pause/resume holding the sender back, then end', async () => {
  const payload = randomBytes(24 << 20);
  const got = await transfer(payload, (s) => new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let received = 0;
    let views = 0;
    let lastView: ArrayBufferLike | null = null;
    const installed = readIntoBuffer(s, 64 * 1024, (view) => {
      assert.ok(view.length <= 64 * 1024);
      if (lastView && view.buffer !== lastView) views++;
      lastView = view.buffer;
      parts.push(Buffer.from(view)); // copy: the view is reused by the next read
      received += view.length;
    });
    assert.equal(installed, true);
    s.pause();
    setTimeout(() => {
      try {
        assert.ok(received < 4 << 20, `paused: at most what was in flight arrived (${received} bytes)`);
      } catch (e) { reject(e); }
      s.resume();
    }, 300);
    s.on('end', () => { assert.equal(views, 0, 'every read used the same buffer'); resolve(Buffer.concat(parts)); });
    s.on('error', reject);
  }));
  assert.equal(got.length, payload.length);
  assert.equal(sha(got), sha(payload));
});

test('reads land straight in the frames being assembled: every frame intact, in order, in a buffer of its own', async () => {
  // frames of many sizes (1 byte to 1 MiB + header), so frame ends fall anywhere in a TLS record
  const frames: Buffer[] = [];
  for (let i = 0; i < 120; i++) {
    const len = i % 3 === 0 ? 1 : i % 3 === 1 ? 1 + ((i * 7919) % 40000) : (1 << 20) + 57;
    const f = randomBytes(4 + len);
    f.writeUInt32BE(len, 0);
    frames.push(f);
  }
  const got = await transfer(Buffer.concat(frames), (s) => new Promise((resolve, reject) => {
    const reader = new FrameAssembler();
    const out: Buffer[] = [];
    let lastBody: ArrayBufferLike | null = null;
    const take = (): void => {
      for (let f = reader.next(); f; f = reader.next()) {
        assert.notEqual(f.body.buffer, lastBody, 'each frame has a buffer of its own');
        lastBody = f.body.buffer;
        out.push(Buffer.concat([Buffer.from([f.type]), f.body]));
      }
    };
    const installed = readIntoTargets(s, () => reader.target(), (n) => { reader.landed(n); take(); }, (b) => { reader.push(b); take(); });
    assert.equal(installed, true);
    s.pause();
    setTimeout(() => s.resume(), 200);
    s.on('end', () => resolve(Buffer.concat(out)));
    s.on('error', reject);
  }));
  assert.equal(sha(got), sha(Buffer.concat(frames.map((f) => f.subarray(4)))));
});

test('with VMLIFT_SOCKET_DATA_EVENTS=1 nothing changes: data events as usual', async () => {
  process.env.VMLIFT_SOCKET_DATA_EVENTS = '1';
  try {
    const payload = randomBytes(3 << 20);
    const got = await transfer(payload, (s) => new Promise((resolve) => {
      assert.equal(readIntoBuffer(s, 65536, () => assert.fail('must not be called')), false);
      assert.equal(readIntoTargets(s, () => Buffer.alloc(1), () => assert.fail('must not be called'), () => assert.fail('must not be called')), false);
      const parts: Buffer[] = [];
      s.on('data', (d: Buffer) => parts.push(d));
      s.on('end', () => resolve(Buffer.concat(parts)));
    }));
    assert.equal(sha(got), sha(payload));
  } finally {
    delete process.env.VMLIFT_SOCKET_DATA_EVENTS;
  }
});
