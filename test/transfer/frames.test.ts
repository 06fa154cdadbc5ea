import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { FRAME, FrameAssembler, ProtocolError, encodeJsonFrame } from '../../src/transfer/protocol.ts';

function frame(type: number, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length + 1, 0);
  head.writeUInt8(type, 4);
  return Buffer.concat([head, body]);
}

test('frames come out whole however the bytes are cut, and the lent bytes may be overwritten at once', () => {
  const bodies = [randomBytes(1), randomBytes(70_000), randomBytes(3), randomBytes(70_000), randomBytes(1 << 20)];
  const wire = Buffer.concat([...bodies.map((b) => frame(FRAME.EXTENT, b)), encodeJsonFrame(FRAME.SYNC, { token: 7 })]);
  for (const cut of [1, 2, 5, 4096, 16_384, 65_537, wire.length]) {
    const a = new FrameAssembler();
    const lent = Buffer.alloc(cut);
    const out: { type: number; body: Buffer }[] = [];
    for (let at = 0; at < wire.length; at += cut) {
      const n = wire.copy(lent, 0, at, at + cut);
      a.push(lent.subarray(0, n));
      lent.fill(0xee); // the socket reuses its buffer for the next read
      for (let f = a.next(); f; f = a.next()) out.push(f);
    }
    assert.equal(out.length, bodies.length + 1, `cut ${cut}`);
    bodies.forEach((b, i) => assert.ok(out[i]!.body.equals(b), `cut ${cut}, frame ${i}`));
    assert.deepEqual(JSON.parse(out.at(-1)!.body.toString()), { token: 7 });
  }
});

test('a big frame given back with recycle is reused for the next frame of its size', () => {
  const a = new FrameAssembler();
  const body = randomBytes(1 << 20);
  a.push(frame(FRAME.EXTENT, body));
  const first = a.next()!;
  assert.equal(first.owned, true);
  const ab = first.body.buffer;
  a.recycle(ab);
  a.push(frame(FRAME.EXTENT, randomBytes(1 << 20)));
  assert.equal(a.next()!.body.buffer, ab, 'the recycled buffer holds the next frame');
  a.push(frame(FRAME.EXTENT, body));
  assert.notEqual(a.next()!.body.buffer, ab, 'a buffer still in use is not handed out twice');
});

test('a declared length above the limit is refused after the frames before it, before buffering it', () => {
  const a = new FrameAssembler(1024);
  const bad = Buffer.alloc(5);
  bad.writeUInt32BE(1 << 30, 0);
  a.push(Buffer.concat([frame(FRAME.SYNC, Buffer.from('{}')), bad, randomBytes(100)]));
  assert.equal(a.next()!.type, FRAME.SYNC);
  assert.throws(() => a.next(), (e: unknown) => e instanceof ProtocolError && e.code === 'BAD_FRAME_LENGTH' && /1073741824/.test(e.message));
  const zero = new FrameAssembler();
  zero.push(Buffer.alloc(5));
  assert.throws(() => zero.next(), (e: unknown) => e instanceof ProtocolError && e.code === 'BAD_FRAME_LENGTH');
});

test('a smaller big frame (a compressed extent) does not empty the pool, and one above half its size reuses a pooled buffer', () => {
  const a = new FrameAssembler();
  a.push(frame(FRAME.EXTENT, randomBytes(1 << 20)));
  const raw = a.next()!.body.buffer;
  a.recycle(raw);
  a.push(frame(FRAME.EXTENT, randomBytes(300_000)));
  const small = a.next()!;
  assert.notEqual(small.body.buffer, raw, 'a frame of less than half the pooled size gets a buffer of its own size');
  assert.equal(small.body.buffer.byteLength, 5 + 300_000);
  const body = randomBytes(700_000);
  a.push(frame(FRAME.EXTENT, body));
  const mid = a.next()!;
  assert.equal(mid.body.buffer, raw, 'the recycled raw buffer holds a frame above half its size');
  assert.ok(mid.body.equals(body));
  assert.equal(mid.body.length, 700_000);
  a.recycle(mid.body.buffer);
  const out = a.buffer(1 << 20);
  assert.equal(out.buffer, raw, 'an extent decompressed into a pooled buffer');
  assert.equal(out.length, 1 << 20);
});
