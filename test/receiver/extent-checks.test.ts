import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { checkExtentFrame } from '../../src/receiver/extent-checks.ts';
import { CODEC, MAX_DATA_EXTENT, MAX_ZERO_EXTENT, ProtocolError, encodeExtentHeader, type ExtentHeader } from '../../src/transfer/protocol.ts';
import { CodecPool } from '../../src/transfer/codec-pool.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';

const disks = [{ disk: 0, capacity: 1 << 20 }, { disk: 1, capacity: 8192 }];
const sha = (b: Uint8Array) => treeDigest(b);

/** An EXTENT frame's body (what FrameAssembler hands over: the bytes after the type). */
function frame(h: Partial<ExtentHeader>, payload = Buffer.alloc(0)): Buffer {
  const head = encodeExtentHeader({ codec: CODEC.RAW, seq: 1, disk: 0, offset: 0, length: payload.length, digest: sha(payload), ...h }, payload.length);
  return Buffer.concat([head.subarray(5), payload]);
}
const refused = (code: string, msg: RegExp) => (e: unknown) => e instanceof ProtocolError && e.code === code && msg.test(e.message);
const check = (body: Buffer) => checkExtentFrame(body, disks, 'c1');

test('a well-formed extent comes back with its header and a view of its payload', () => {
  const data = Buffer.alloc(4096, 3);
  const body = frame({ seq: 9, disk: 1, offset: 4096 }, data);
  const x = check(body);
  assert.deepEqual({ ...x.header, digest: undefined }, { codec: CODEC.RAW, seq: 9, disk: 1, offset: 4096, length: 4096, digest: undefined });
  assert.ok(x.payload.equals(data) && x.payload.buffer === body.buffer, 'not copied');
  assert.equal(check(frame({ codec: CODEC.ZERO, length: 1 << 20 })).header.codec, CODEC.ZERO);
  assert.equal(check(frame({ codec: CODEC.ZSTD, length: 4096 }, Buffer.alloc(20))).payload.length, 20);
});

test('lengths: a short header, a marker with a payload or too long, a data extent too long, a raw payload of another length', () => {
  assert.throws(() => check(Buffer.alloc(55)), refused('BAD_LENGTH', /55 bytes is shorter than its header/));
  assert.throws(() => check(frame({ codec: CODEC.ZERO, length: 4096 }, Buffer.alloc(1))), refused('BAD_LENGTH', /zero marker with 1 payload bytes/));
  assert.throws(() => checkExtentFrame(frame({ codec: CODEC.ZERO, length: MAX_ZERO_EXTENT + 512 }), [{ disk: 0, capacity: 2 * MAX_ZERO_EXTENT }], 'c1'),
    refused('BAD_LENGTH', /zero marker/));
  assert.throws(() => checkExtentFrame(frame({ codec: CODEC.ZSTD, length: MAX_DATA_EXTENT + 1 }, Buffer.alloc(10)), [{ disk: 0, capacity: 1 << 30 }], 'c1'),
    refused('BAD_LENGTH', /exceeds/));
  assert.throws(() => check(frame({ length: 4096 }, Buffer.alloc(4000))), refused('BAD_LENGTH', /says 4096 bytes but carries 4000/));
});

test('range: an empty extent, one past the end of its disk, a disk not in the cycle, an unknown codec', () => {
  assert.throws(() => check(frame({ codec: CODEC.ZERO, length: 0 })), refused('OUT_OF_RANGE', /0\+0/));
  assert.throws(() => check(frame({ disk: 1, offset: 8192 - 512, length: 1024 }, Buffer.alloc(1024))), refused('OUT_OF_RANGE', /beyond disk 1 \(capacity 8192\)/));
  assert.throws(() => check(frame({ offset: 2 ** 47 }, Buffer.alloc(512))), refused('OUT_OF_RANGE', /beyond disk 0/));
  assert.throws(() => check(frame({ disk: 2 }, Buffer.alloc(512))), refused('BAD_DISK', /disk 2 is not part of cycle c1/));
  assert.throws(() => check(frame({ codec: 9 }, Buffer.alloc(512))), refused('BAD_CODEC', /unknown codec 9/));
});

const pool = new CodecPool(1, false);
after(() => pool.close());

test('the digest is not checked on arrival: a checked frame with a wrong digest is refused when it is decoded', async () => {
  const data = Buffer.alloc(4096, 1);
  const x = check(frame({ digest: Buffer.alloc(32, 0xee) }, data));
  await assert.rejects(pool.unpack(x.header.codec, x.payload, x.header.length, x.header.digest), refused('BAD_DIGEST', /extent digest mismatch/));
});
