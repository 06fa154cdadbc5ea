/**
 * Compression never slows the link (issue 2: "the default must not slow a 10 Gbit/s link below
 * uncompressed speed"): when the sender waits for its codec workers rather than for the network,
 * pieces go out uncompressed; on a rate-limited link every piece is compressed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { CompressionGovernor } from '../../src/transfer/compression-governor.ts';
import { startTestReceiver, sha256, readDisk } from './helpers.ts';
import { textCorpus } from '../../scripts/lib/gen-disk.ts';

const MiB = 1024 * 1024;

test('governor: waiting on packing turns compression off, waiting on the network turns it back on', () => {
  const g = new CompressionGovernor();
  assert.equal(g.levelFor(3, MiB), 3, 'compresses before anything was observed');
  for (let i = 0; i < 5; i++) g.observe(4, 0);
  assert.equal(g.levelFor(3, MiB), null, 'codec-bound: uncompressed');
  assert.equal(g.levelFor(null, MiB), null, 'level 0 stays uncompressed');
  for (let i = 0; i < 5; i++) g.observe(0, 20);
  assert.equal(g.levelFor(3, MiB), 3, 'network-bound: compressed again');
  assert.equal(g.rawPieces, 1);
  assert.equal(g.rawBytes, MiB);
});

const TIMING = { periodMs: 1000, maxPeriodMs: 16_000, probeMs: 500, settleBytes: 16 * MiB, minProbeRate: 50_000 };

/** A pump with no lag: each piece takes `msPerPiece[mode]` of the fake clock to go out. */
function drive(g: CompressionGovernor, clock: { t: number }, pieces: number, msPerPiece: { compressed: number; raw: number }): { raw: number; compressed: number } {
  const n = { raw: 0, compressed: 0 };
  for (let i = 0; i < pieces; i++) {
    const { level, tag } = g.pick(7, MiB);
    const mode = level === null ? 'raw' : 'compressed';
    n[mode]++;
    clock.t += msPerPiece[mode];
    g.written(tag, MiB);
  }
  return n;
}

test('governor: the mode that moves more bytes per second wins the probes; probes get rarer while it keeps winning', () => {
  const clock = { t: 0 };
  const g = new CompressionGovernor(0.2, 0.8, TIMING, () => clock.t);
  // both ends share the CPUs: compressed pieces go out slower than raw ones
  drive(g, clock, 400, { compressed: 8, raw: 5 });
  assert.equal(g.decisions.at(-1), 'raw');
  const later = drive(g, clock, 400, { compressed: 8, raw: 5 });
  assert.ok(later.raw > later.compressed * 4, `mostly uncompressed once measured faster (${JSON.stringify(later)})`);
  // the link slows down (or the codec gets cheap): compressed pieces move more source bytes again
  drive(g, clock, 1500, { compressed: 5, raw: 12 });
  assert.equal(g.decisions.at(-1), 'compressed');
});

test('governor: a link slower than the probe threshold is never probed; a near tie stays compressed', () => {
  const clock = { t: 0 };
  const g = new CompressionGovernor(0.2, 0.8, TIMING, () => clock.t);
  const n = drive(g, clock, 3000, { compressed: 40, raw: 80 }); // 26 MB/s of source compressed
  assert.deepEqual(g.decisions, []);
  assert.equal(n.raw, 0, 'no uncompressed probe on a slow link');
  const tie = new CompressionGovernor(0.2, 0.8, TIMING, () => clock.t);
  drive(tie, clock, 600, { compressed: 10, raw: 9.5 }); // raw 5 % faster: within the margin
  assert.ok(tie.decisions.length > 0 && tie.decisions.every((d) => d === 'compressed'), tie.decisions.join());
});

/** 1 MiB pieces, half random and half text: compress about 2:1, and slowly at zstd level 9. */
function halfCompressible(pieces: number): Buffer {
  const text = Buffer.from('vmlift keeps the link full: compressed when the network is slow, raw when the codec is. ');
  const b = Buffer.alloc(pieces * MiB);
  for (let p = 0; p < pieces; p++) {
    randomBytes(MiB / 2).copy(b, p * MiB);
    for (let i = MiB / 2; i < MiB; i += text.length) text.copy(b, p * MiB + i, 0, Math.min(text.length, MiB - i));
  }
  return b;
}

/** `pieces` MiB of real text (/usr/share/doc): zstd level 9 packs it at ~75 MB/s on two workers here. */
async function text(pieces: number): Promise<Buffer> {
  const corpus = await textCorpus();
  const b = Buffer.alloc(pieces * MiB);
  for (let p = 0; p < b.length; p += corpus.length) corpus.copy(b, p, 0, Math.min(corpus.length, b.length - p));
  return b;
}

test('a fast link with a slow codec (level 10 over loopback): some pieces go raw, the image is intact', async () => {
  const t = await startTestReceiver();
  try {
    const data = await text(64);
    const s = await t.sender('fast-link', { compression: 10, checksum: false, windowBytes: 8 * MiB });
    const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: data.length }], baseImageId: null });
    for (let off = 0; off < data.length; off += MiB) await c.send(0, off, data.subarray(off, off + MiB));
    const img = await c.commit();
    const st = c.stats();
    assert.ok(st.uncompressedForSpeedBytes > 0, 'the codec was the bottleneck, yet every piece was compressed');
    assert.ok(st.wireBytes < data.length + 64 * 1024, 'no piece went out bigger than raw');
    assert.equal(sha256(await readDisk(t.rx, 'fast-link', img.imageId, 0, data.length)), sha256(data));
    await s.close();
  } finally {
    await t.close();
  }
});

test('a rate-limited link (24 Mbit/s) with a fast codec: every piece is compressed', async () => {
  const t = await startTestReceiver();
  try {
    const data = halfCompressible(12);
    // a 2 MiB window: most pieces are packed after the pump has seen the link hold it back
    const s = await t.sender('slow-link', { compression: 7, checksum: false, bandwidthMbps: 24, windowBytes: 2 * MiB });
    const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: data.length }], baseImageId: null });
    for (let off = 0; off < data.length; off += MiB) await c.send(0, off, data.subarray(off, off + MiB));
    const img = await c.commit();
    const st = c.stats();
    assert.equal(st.uncompressedForSpeedBytes, 0);
    assert.ok(st.wireBytes < data.length * 0.6, `compressed about 2:1 (${st.wireBytes} wire bytes for ${data.length})`);
    assert.equal(sha256(await readDisk(t.rx, 'slow-link', img.imageId, 0, data.length)), sha256(data));
    await s.close();
  } finally {
    await t.close();
  }
});

test('governor: a fast link starts its raw probe as soon as the compressed rate is measured', () => {
  const clock = { t: 0 };
  const g = new CompressionGovernor(0.2, 0.8, TIMING, () => clock.t);
  let firstRaw = -1;
  for (let i = 0; i < 200 && firstRaw < 0; i++) {
    const { level, tag } = g.pick(7, MiB);
    if (level === null) firstRaw = clock.t;
    clock.t += 8; // 131 MB/s of source compressed: above minProbeRate
    g.written(tag, MiB);
  }
  // measured after settleBytes (16 MiB) plus a quarter of it: 20 pieces, 160 ms, not the 1000 ms period
  assert.ok(firstRaw >= 0 && firstRaw < TIMING.periodMs / 4, `first raw piece at ${firstRaw} ms`);
});

test('governor: while raw wins by a wide margin the compressed probes are shorter, but still measured', () => {
  const clock = { t: 0 };
  const wide = new CompressionGovernor(0.2, 0.8, TIMING, () => clock.t);
  const w = drive(wide, clock, 3000, { compressed: 8, raw: 2 }); // raw 4 times faster
  const narrow = new CompressionGovernor(0.2, 0.8, TIMING, () => clock.t);
  const n = drive(narrow, clock, 3000, { compressed: 8, raw: 5 }); // raw 1.6 times faster
  assert.ok(wide.decisions.length > 2 && wide.decisions.every((d) => d === 'raw'), wide.decisions.join());
  assert.ok(narrow.decisions.every((d) => d === 'raw'), narrow.decisions.join());
  assert.ok(w.compressed / 3000 < n.compressed / 3000 / 2, `compressed share: wide ${w.compressed}, narrow ${n.compressed} of 3000`);
  // the link slows: the shortened probe still measures compressed as the winner
  drive(wide, clock, 4000, { compressed: 5, raw: 12 });
  assert.equal(wide.decisions.at(-1), 'compressed');
});
