import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { MAX_PACKS, PiecePacker } from '../../src/transfer/piece-packer.ts';
import { CompressionGovernor } from '../../src/transfer/compression-governor.ts';
import { CODEC } from '../../src/transfer/protocol.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';

const sha = (b: Uint8Array) => treeDigest(b);
const text = (n: number) => Buffer.from('vmlift packs pieces; '.repeat(Math.ceil(n / 21)).slice(0, n));

test('zeros become a marker without a payload and without asking the governor', async () => {
  const g = new CompressionGovernor();
  const p = new PiecePacker(g, () => 1);
  const { packed, phase } = p.pack(null, 0, 1 << 20);
  assert.deepEqual(await packed, { codec: CODEC.ZERO, payload: null, digest: Buffer.alloc(32) });
  assert.equal(phase, undefined);
  assert.equal(g.rawBytes, 0);
});

test('a piece of a larger buffer is packed from its own bytes, at the configured level', async () => {
  const data = Buffer.concat([randomBytes(4096), text(65536)]);
  const p = new PiecePacker(new CompressionGovernor(), () => 1);
  const piece = p.pack(data, 4096, 65536);
  const got = await piece.packed;
  assert.equal(got.codec, CODEC.ZSTD);
  assert.ok(got.payload!.length < 65536);
  assert.ok(got.digest.equals(sha(data.subarray(4096))));
  assert.ok(piece.phase, 'compressed pieces carry the governor phase they were packed in');
  assert.ok(data.buffer.byteLength > 0, 'not handed over: the caller keeps its buffer');
});

test('compression off: raw pieces, no phase; a caller digest (the piece\'s) is not computed again', async () => {
  const data = randomBytes(32 * 1024);
  const fake = Buffer.alloc(32, 7);
  const p = new PiecePacker(new CompressionGovernor(), () => null);
  const whole = await p.pack(data, 0, data.length, { digest: fake }).packed;
  assert.deepEqual([whole.codec, whole.digest.equals(fake)], [CODEC.RAW, true]);
  const part = await p.pack(data, 0, 16 * 1024, { digest: fake }).packed;
  assert.ok(part.digest.equals(fake), 'the digest given for a piece is that piece\'s');
  const hashed = await p.pack(data, 0, 16 * 1024).packed;
  assert.ok(hashed.digest.equals(sha(data.subarray(0, 16 * 1024))), 'without one the piece is hashed');
  assert.equal(p.pack(data, 0, 4096).phase, undefined);
});

test('a handed-over buffer that is one whole piece moves to the worker; packs in flight are counted', async () => {
  const data = Buffer.from(new ArrayBuffer(1 << 20));
  text(1 << 20).copy(data);
  const digest = sha(data);
  const p = new PiecePacker(new CompressionGovernor(), () => 1);
  const pieces = [p.pack(data, 0, data.length, { handOver: true }), p.pack(null, 0, 512), p.pack(null, 0, 512)];
  assert.equal(p.codecQueued, true, 'three packs in flight for two codec workers');
  assert.equal(data.buffer.byteLength, 0, 'transferred, not copied');
  const [first] = await Promise.all(pieces.map((x) => x.packed));
  assert.ok(first!.digest.equals(digest));
  assert.equal(p.codecQueued, false);
});

test('a handed-over view of a larger buffer (the agent\'s read units) is sent raw in place, and copied for compression', async () => {
  const unit = Buffer.from(new ArrayBuffer(4 << 20));
  text(4 << 20).copy(unit);
  const view = unit.subarray(1 << 20, 2 << 20);
  const digest = sha(view);
  const rawPiece = new PiecePacker(new CompressionGovernor(), () => null).pack(view, 0, view.length, { handOver: true, digest });
  assert.equal(rawPiece.copied, false, 'the sender holds the caller\'s bytes until the piece is acknowledged');
  const raw = await rawPiece.packed;
  assert.equal(raw.codec, CODEC.RAW);
  assert.equal(raw.payload!.buffer, unit.buffer, 'the payload is the caller\'s bytes, not a copy');
  assert.equal(raw.payload!.byteOffset, 1 << 20);
  const keptPiece = new PiecePacker(new CompressionGovernor(), () => null).pack(view, 0, view.length, { digest });
  assert.equal(keptPiece.copied, true);
  const kept = await keptPiece.packed;
  assert.notEqual(kept.payload!.buffer, unit.buffer, 'not handed over: copied, the caller may reuse its buffer at once');
  assert.ok(kept.payload!.equals(view));
  const zstdPiece = new PiecePacker(new CompressionGovernor(), () => 1).pack(view, 0, view.length, { handOver: true, digest });
  assert.equal(zstdPiece.copied, true, 'compressed from a copy: the caller\'s bytes are free at once (the sender releases them)');
  const zstd = await zstdPiece.packed;
  assert.equal(zstd.codec, CODEC.ZSTD);
  assert.equal(unit.buffer.byteLength, 4 << 20, 'a view is never transferred to a worker (the rest of its buffer is the caller\'s)');
  assert.ok(zstd.digest.equals(digest));
});

test('at most MAX_PACKS packs in flight: full until one finishes, then room', async () => {
  const p = new PiecePacker(new CompressionGovernor(), () => 1);
  const pieces = Array.from({ length: MAX_PACKS }, (_, k) => p.pack(text(1 << 20), 0, (1 << 20) - k));
  assert.equal(p.full, true);
  await p.room();
  assert.equal(p.full, false);
  const got = await Promise.all(pieces.map((x) => x.packed));
  for (const [k, g] of got.entries()) assert.ok(g.digest.equals(sha(text(1 << 20).subarray(0, (1 << 20) - k))), `piece ${k}`);
  for (const g of got) g.release?.();
});
