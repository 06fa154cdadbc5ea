/**
 * Pieces copied for the codec workers live in pooled buffers: every buffer comes back (at once for
 * compressed pieces and markers, when the send window lets go of raw ones), reuse never changes a
 * piece's bytes, and a codec worker that dies mid-cycle neither leaks buffers nor corrupts an image.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { BufferPool } from '../../src/util/buffer-pool.ts';
import { CodecPool, sharedCodecPool } from '../../src/transfer/codec-pool.ts';
import { CODEC } from '../../src/transfer/protocol.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';
import { makeDisk, readDisk, sendDisk, sha256, startTestReceiver } from './helpers.ts';

const MiB = 1 << 20;
const text = (n: number): Buffer => Buffer.from('the quick brown fox jumps over the lazy dog, 0123456789 '.repeat(Math.ceil(n / 56))).subarray(0, n);

test('BufferPool: buffers are reused, counted until given back or lost, and only its own size is taken back', () => {
  const p = new BufferPool(4096, 2);
  const a = p.take(); const b = p.take(); const c = p.take();
  assert.equal(a.byteLength, 4096);
  assert.equal(p.outstanding, 3);
  p.give(a); p.give(b); p.give(c); // the third is beyond what it keeps
  assert.equal(p.outstanding, 0);
  assert.equal(p.idle, 2);
  assert.ok([a, b].includes(p.take()));
  p.lost();
  assert.equal(p.outstanding, 0);
  assert.throws(() => p.give(new ArrayBuffer(100)), RangeError);
});

test('codec pool: compressed pieces and markers give their buffer back at once, raw ones on release; bytes survive reuse', async () => {
  const pool = new CodecPool(2);
  after(() => pool.close());
  const bufs = pool.pieceBuffers;
  const t = text(MiB);
  const z = await pool.pack(t, 1);
  assert.equal(z.codec, CODEC.ZSTD);
  assert.equal(z.release, undefined);
  assert.equal(bufs.outstanding, 0);
  assert.ok((await pool.unpack(z.codec, Buffer.from(z.payload!), MiB, z.digest)).equals(t));

  const zero = await pool.pack(Buffer.alloc(MiB), 1);
  assert.equal(zero.codec, CODEC.ZERO);
  assert.equal(bufs.outstanding, 0);

  // raw pieces hold their buffer until released; a shorter piece is a view of one
  const r1 = randomBytes(MiB); const r2 = randomBytes(600 * 1024);
  const p1 = await pool.pack(r1, 1); const p2 = await pool.pack(r2, 1);
  assert.equal(p1.codec, CODEC.RAW);
  assert.equal(p2.codec, CODEC.RAW);
  assert.equal(bufs.outstanding, 2);
  assert.ok(p1.payload!.equals(r1));
  assert.ok(p2.payload!.equals(r2));
  assert.ok(p2.digest.equals(treeDigest(r2)));
  p1.release!(); p1.release!(); // once only
  assert.equal(bufs.outstanding, 1);
  // the next piece reuses p1's buffer; p2's bytes stay as they were
  const t2 = text(MiB).reverse();
  const z2 = await pool.pack(t2, 1);
  assert.ok((await pool.unpack(z2.codec, Buffer.from(z2.payload!), MiB, z2.digest)).equals(t2));
  assert.ok(p2.payload!.equals(r2));
  p2.release!();
  assert.equal(bufs.outstanding, 0);
  assert.ok(bufs.idle <= 2, `buffers made: ${bufs.idle}`);
});

test('codec pool: a worker killed with pieces in it fails those packs, loses no count, and the next packs work', async () => {
  const pool = new CodecPool(2);
  after(() => pool.close());
  await pool.pack(text(MiB), 1); // workers started
  const pieces = Array.from({ length: 8 }, () => randomBytes(MiB));
  const packs = pieces.map((d) => pool.pack(d, 7).then((p) => ({ ok: true as const, p }), (e: Error) => ({ ok: false as const, e })));
  await pool.killWorker();
  const results = await Promise.all(packs);
  for (const [k, r] of results.entries()) {
    if (r.ok) { assert.ok(r.p.payload!.equals(pieces[k]!)); r.p.release?.(); } else assert.match(r.e.message, /exited/);
  }
  assert.ok(results.some((r) => !r.ok), 'some pack was in the killed worker');
  assert.equal(pool.pieceBuffers.outstanding, 0);
  const t = text(MiB);
  const z = await pool.pack(t, 1);
  assert.ok((await pool.unpack(z.codec, Buffer.from(z.payload!), MiB, z.digest)).equals(t));
});

test('a cycle at compression 7 returns every piece buffer; a codec worker killed mid-cycle fails that cycle without a leak, and its rerun image is bit-identical', async () => {
  const t = await startTestReceiver();
  after(() => t.close());
  const size = 48 * MiB;
  const disk = makeDisk(size, 7);
  const bufs = sharedCodecPool().pieceBuffers;
  const sender = await t.sender('pool-src', { compression: 7 });
  try {
    const c1 = await sender.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: size }] });
    await sendDisk(c1, 0, disk);
    const img1 = await c1.commit();
    assert.equal(sha256(await readDisk(t.rx, sender.sourceId, img1.imageId, 0, size)), sha256(disk));
    assert.equal(bufs.outstanding, 0, 'every buffer back after a cycle');

    // the second cycle: a codec worker dies while pieces are in it
    const disk2 = Buffer.from(disk); randomBytes(8 * MiB).copy(disk2, 20 * MiB);
    const c2 = await sender.beginCycle({ cycleId: 'c2', disks: [{ disk: 0, capacity: size }] });
    let killed = false;
    const sent = (async () => {
      for (let off = 0; off < size; off += MiB) {
        if (off === 8 * MiB) { killed = true; void sharedCodecPool().killWorker(); }
        await c2.send(0, off, disk2.subarray(off, off + MiB));
      }
      return c2.commit();
    })();
    const outcome = await sent.then((img) => ({ img }), (e: Error) => ({ e }));
    assert.ok(killed);
    process.stderr.write(`killed-worker cycle: ${'img' in outcome ? 'committed' : `failed: ${outcome.e.message}`}\n`);
    if ('img' in outcome) {
      // no piece was in the dead worker: the cycle committed, and its image must be right
      assert.equal(sha256(await readDisk(t.rx, sender.sourceId, outcome.img.imageId, 0, size)), sha256(disk2));
    } else {
      assert.match(outcome.e.message, /exited/);
      await c2.abort().catch(() => {});
      const c3 = await sender.beginCycle({ cycleId: 'c3', disks: [{ disk: 0, capacity: size }] });
      await sendDisk(c3, 0, disk2);
      const img3 = await c3.commit();
      assert.equal(sha256(await readDisk(t.rx, sender.sourceId, img3.imageId, 0, size)), sha256(disk2));
    }
    assert.equal(bufs.outstanding, 0, 'no buffer lost to the dead worker or the failed cycle');
    // the first image is untouched
    assert.equal(sha256(await readDisk(t.rx, sender.sourceId, img1.imageId, 0, size)), sha256(disk));
  } finally {
    await sender.close();
  }
});
