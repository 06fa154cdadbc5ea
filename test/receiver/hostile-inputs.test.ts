/**
 * Regression tests for what the receiver fuzzer found (docs/reliability.md, "Fuzzing the receiver"):
 * each input once, against an in-process receiver over TLS. Before the fixes: a commit with a meta
 * nested 10^5 deep and a SYNC with a token nested 30,000 deep overflowed the stack (INTERNAL); a
 * peer not let in could make the receiver allocate a 4 MiB frame buffer per connection; register read
 * bodies up to 64 MiB before any credential; a body that broke off was logged as a receiver failure;
 * a TCP connection that never started TLS was kept for good.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startTestReceiver, type TestRx } from '../transfer/helpers.ts';
import { connectPinned } from '../../src/transfer/connect.ts';
import { ControlClient } from '../../src/transfer/control-client.ts';
import { createHash } from 'node:crypto';
import { CODEC, FRAME, FrameAssembler, MAX_FRAME, encodeExtentHeader, encodeJsonFrame, parseJsonBody } from '../../src/transfer/protocol.ts';
import { HANDSHAKE_TIMEOUT_MS } from '../../src/receiver/server.ts';
import { BODY_LIMITS } from '../../src/receiver/control.ts';
import { RawHttp } from './fuzz/http-raw.ts';
import { deepJson } from './fuzz/hostile-values.ts';
import { WIRE_VERSION } from '../../src/transfer/wire-version.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';

let t: TestRx;
let cred: string;
before(async () => {
  t = await startTestReceiver();
  cred = (await t.control().register({ sourceId: 'hx', code: t.code })).credential;
});
after(async () => { await t.close(); });

const authed = () => new ControlClient({ host: '127.0.0.1', port: t.rx.controlPort, fingerprint: t.rx.fingerprint }, { sourceId: 'hx', credential: cred });
const authHead = () => `x-vmlift-source: hx\r\nauthorization: Bearer ${cred}\r\nx-vmlift-wire: ${WIRE_VERSION}\r\n`;
const errorCode = (body: Buffer): string => (JSON.parse(body.toString('utf8')) as { error: { code: string } }).error.code;
const noErrorLogged = () => assert.deepEqual(t.log.lines.filter((l) => l.level === 50).map((l) => l.msg), [], 'nothing logged as a receiver failure');

async function dataPeer(): Promise<{ s: net.Socket; frames: { type: number; msg: Record<string, unknown> }[]; closed: Promise<void> }> {
  const s = await connectPinned({ host: '127.0.0.1', port: t.rx.dataPort, fingerprint: t.rx.fingerprint });
  const frames: { type: number; msg: Record<string, unknown> }[] = [];
  const reader = new FrameAssembler();
  s.on('data', (c: Buffer) => { reader.push(c); for (let f = reader.next(); f; f = reader.next()) frames.push({ type: f.type, msg: parseJsonBody(f.body) }); });
  const closed = new Promise<void>((r) => { s.on('close', () => r()); s.on('error', () => undefined); });
  return { s, frames, closed };
}

test('a commit whose meta nests 10^5 deep is refused as a bad request; the cycle stays open and commits', async () => {
  const h = new RawHttp(t.rx.controlPort);
  const begin = JSON.stringify({ cycleId: 'deep', disks: [{ disk: 0, capacity: 4096 }] });
  const b = await h.request(`POST /v1/cycles HTTP/1.1\r\nHost: x\r\n${authHead()}content-length: ${begin.length}\r\n\r\n`, Buffer.from(begin));
  assert.ok(b !== 'closed' && b.status === 200);
  const body = `{"meta":${deepJson(100_000, 'object')}}`;
  const a = await h.request(`POST /v1/cycles/deep/commit HTTP/1.1\r\nHost: x\r\n${authHead()}content-length: ${body.length}\r\n\r\n`, Buffer.from(body));
  assert.ok(a !== 'closed');
  assert.equal(a.status, 400);
  assert.match(a.body.toString(), /meta nests deeper than 64 levels/);
  h.close();
  const img = await authed().commitCycle('deep', { meta: { a: { b: { c: 1 } } } });
  assert.deepEqual(img.meta, { a: { b: { c: 1 } } });
  noErrorLogged();
});

test('a SYNC whose token is not a number is refused (a 30,000-deep one overflowed the stack)', async () => {
  await authed().beginCycle({ cycleId: 'sync', disks: [{ disk: 0, capacity: 4096 }] });
  const p = await dataPeer();
  p.s.write(encodeJsonFrame(FRAME.HELLO, { sourceId: 'hx', credential: cred, cycleId: 'sync', streamId: 'ab' , wireVersion: WIRE_VERSION }));
  while (!p.frames.length) await new Promise((r) => setTimeout(r, 20));
  assert.equal(p.frames[0]!.type, FRAME.READY);
  const deep = Buffer.from(`{"token":${deepJson(30_000, 'array')}}`);
  const f = Buffer.alloc(5); f.writeUInt32BE(1 + deep.length, 0); f[4] = FRAME.SYNC;
  p.s.write(Buffer.concat([f, deep]));
  await p.closed;
  const err = p.frames.find((x) => x.type === FRAME.ERROR);
  assert.equal(err?.msg.code, 'BAD_FRAME');
  assert.match(String(err?.msg.message), /SYNC token must be a number/);
  await authed().abortCycle('sync', {});
  noErrorLogged();
});

test('before its HELLO is accepted a peer may announce only a HELLO-sized frame', async () => {
  const p = await dataPeer();
  const head = Buffer.alloc(5); head.writeUInt32BE(MAX_FRAME, 0); head[4] = FRAME.HELLO;
  p.s.write(head); // the length alone: refused before any buffer is made for it
  await p.closed;
  const err = p.frames.find((x) => x.type === FRAME.ERROR);
  assert.equal(err?.msg.code, 'BAD_FRAME_LENGTH');
  assert.match(String(err?.msg.message), /frame length 4194361 is outside 1\.\.65537/);
});

test('a HELLO-sized first frame, then full-sized frames pipelined behind it in the same write, are taken', async () => {
  await authed().beginCycle({ cycleId: 'pipe', disks: [{ disk: 0, capacity: 1 << 20 }] });
  const p = await dataPeer();
  const data = Buffer.alloc(1 << 20, 9);
  const ext = Buffer.concat([encodeExtentHeader({ codec: CODEC.RAW, seq: 1, disk: 0, offset: 0, length: data.length, digest: treeDigest(data) }, data.length), data]);
  p.s.write(Buffer.concat([encodeJsonFrame(FRAME.HELLO, { sourceId: 'hx', credential: cred, cycleId: 'pipe', streamId: 'cd' , wireVersion: WIRE_VERSION }), ext, encodeJsonFrame(FRAME.SYNC, { token: 7 })]));
  const until = Date.now() + 30_000;
  while (!p.frames.some((f) => f.type === FRAME.ACK && f.msg.token === 7)) {
    assert.ok(Date.now() < until && !p.frames.some((f) => f.type === FRAME.ERROR), JSON.stringify(p.frames));
    await new Promise((r) => setTimeout(r, 20));
  }
  p.s.destroy();
  assert.deepEqual((await authed().commitCycle('pipe', { expected: [{ disk: 0, ranges: [{ offset: 0, length: 1 << 20 }] }] })).disks[0]?.capacity, 1 << 20);
});

test('request bodies: register is limited before any credential, a declared length is refused before the body, a broken-off body is the client\'s fault', async () => {
  const h = new RawHttp(t.rx.controlPort);
  const big = Buffer.from(JSON.stringify({ sourceId: 'big', code: 'x', pad: 'x'.repeat(BODY_LIMITS.register) }));
  const a = await h.request(`POST /v1/register HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n`,
    Buffer.concat([Buffer.from(`${big.length.toString(16)}\r\n`), big, Buffer.from('\r\n0\r\n\r\n')]));
  assert.ok(a !== 'closed');
  assert.equal(a.status, 413);
  assert.equal(errorCode(a.body), 'BAD_REQUEST');
  h.close();
  const t0 = Date.now();
  const c = await new RawHttp(t.rx.controlPort).request(`POST /v1/cycles/x/commit HTTP/1.1\r\nHost: x\r\n${authHead()}content-length: ${100 * 1024 * 1024}\r\n\r\n`, undefined, 5000);
  assert.ok(c !== 'closed');
  assert.equal(c.status, 413, 'refused from the declared length');
  assert.ok(Date.now() - t0 < 3000);
  // a client that goes away in the middle of its body
  const s = await connectPinned({ host: '127.0.0.1', port: t.rx.controlPort, fingerprint: t.rx.fingerprint });
  s.write(`POST /v1/cycles HTTP/1.1\r\nHost: x\r\n${authHead()}content-length: 1000\r\n\r\n{"cycleId":`);
  await new Promise((r) => setTimeout(r, 300));
  s.destroy();
  await new Promise((r) => setTimeout(r, 500));
  noErrorLogged();
});

test(`a TCP connection that never starts TLS is closed after ${HANDSHAKE_TIMEOUT_MS / 1000} s, on both ports`, async () => {
  const t0 = Date.now();
  const waits = await Promise.all([t.rx.dataPort, t.rx.controlPort].map((port) => new Promise<number>((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    s.on('close', () => resolve(Date.now() - t0));
  })));
  for (const ms of waits) assert.ok(ms >= HANDSHAKE_TIMEOUT_MS - 500 && ms < HANDSHAKE_TIMEOUT_MS + 5000, `closed after ${ms} ms`);
});
