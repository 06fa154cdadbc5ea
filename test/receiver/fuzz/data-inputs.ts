/**
 * Inputs for the data port (docs/transfer.md, "Data"): valid frames built with the protocol module,
 * and mutations of them — bit flips, truncations, frame lengths set huge, zero or odd, unknown codecs
 * and frame types, bad digests, disks and offsets outside the cycle, reordered sequence numbers, zstd
 * bombs, JSON frames that are not JSON, nested deep or oversized.
 */
import { createHash } from 'node:crypto';
import { compress } from 'zstd-napi';
import { CODEC, EXTENT_HEADER, FRAME, MAX_DATA_EXTENT, MAX_FRAME, MAX_JSON_FRAME, MAX_U48, encodeExtentHeader, encodeJsonFrame } from '../../../src/transfer/protocol.ts';
import type { DiskSpec } from '../../../src/model/images.ts';
import type { Prng } from './prng.ts';
import { deepJson, hostileId, randomJson } from './hostile-values.ts';
import { patchedSizeFrame, rleFrame } from './zstd-bombs.ts';
import { WIRE_VERSION } from '../../../src/transfer/wire-version.ts';
import { treeDigest } from '../../../src/util/tree-digest.ts';

const sha = (b: Buffer) => treeDigest(b);

export function rawFrame(type: number, body: Buffer): Buffer {
  const b = Buffer.allocUnsafe(5 + body.length);
  b.writeUInt32BE(1 + body.length, 0);
  b[4] = type;
  body.copy(b, 5);
  return b;
}

export function extentFrame(h: { codec: number; seq: number; disk: number; offset: number; length: number; digest: Buffer }, payload: Buffer): Buffer {
  return Buffer.concat([encodeExtentHeader(h, payload.length), payload]);
}

/** Data that compresses (text-like) or not (random), `n` bytes. */
function someData(r: Prng, n: number): Buffer {
  if (r.chance(0.5)) return r.bytes(n);
  const unit = Buffer.from(`vmlift fuzz ${r.int(1000)} `);
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i += unit.length) unit.copy(b, i, 0, Math.min(unit.length, n - i));
  return b;
}

function extentLength(r: Prng, room: number): number {
  const n = r.chance(0.02) ? r.pick([65536, 1 << 20, r.range(1, 2048) * 512]) : r.pick([512, 4096, 4096, r.range(1, 16384), r.range(1, 32) * 512]);
  return Math.max(1, Math.min(n, room));
}

export interface FrameKind { frame: Buffer; kind: string }

/** A frame the receiver accepts: an extent inside `disks` with the right digest, or a SYNC. */
export function validFrame(r: Prng, disks: readonly DiskSpec[], seq: number): FrameKind {
  const k = r.int(10);
  if (k === 0) return { frame: encodeJsonFrame(FRAME.SYNC, r.chance(0.9) ? { token: r.chance(0.5) ? seq : r.float() * 1e9 } : {}), kind: 'sync' };
  const d = r.pick(disks);
  const length = k <= 3 ? Math.min(d.capacity, r.pick([4096, 65536, 1 << 20, r.range(1, 8192) * 512, r.range(1, 100_000)])) : extentLength(r, Math.min(d.capacity, 1 << 20));
  const offset = r.chance(0.5) ? Math.floor(r.int(d.capacity - length + 1) / 512) * 512 : r.int(d.capacity - length + 1);
  if (k <= 3) return { frame: extentFrame({ codec: CODEC.ZERO, seq, disk: d.disk, offset, length, digest: Buffer.alloc(32) }, Buffer.alloc(0)), kind: 'zero' };
  const data = someData(r, length);
  if (k <= 6) {
    const c = Buffer.from(compress(data));
    return { frame: extentFrame({ codec: CODEC.ZSTD, seq, disk: d.disk, offset, length, digest: sha(data) }, c), kind: 'zstd' };
  }
  return { frame: extentFrame({ codec: CODEC.RAW, seq, disk: d.disk, offset, length, digest: sha(data) }, data), kind: 'raw' };
}

export interface Mutated {
  frame: Buffer;
  kind: string;
  /** Send this, then end our side (a truncated frame the receiver would otherwise wait for). */
  endAfter?: boolean;
}

const HUGE_LENGTHS = [0, 1, 2, 4, 56, 57, MAX_JSON_FRAME + 2, MAX_FRAME, MAX_FRAME + 1, 0x7fffffff, 0x80000000, 0xffffffff];

/** A mutation of a valid frame (or a frame of its own kind); most are refused, some are accepted. */
export function mutatedFrame(r: Prng, disks: readonly DiskSpec[], seq: number): Mutated {
  const base = (): Buffer => Buffer.from(validFrame(r, disks, seq).frame);
  const extent = (): Buffer => {
    for (;;) { const f = validFrame(r, disks, seq); if (f.kind !== 'sync') return Buffer.from(f.frame); }
  };
  const d = r.pick(disks);
  switch (r.int(17)) {
    case 0: {
      const f = base();
      for (let i = r.range(1, 8); i > 0; i--) { const at = r.chance(0.7) ? r.int(Math.min(f.length, 61)) : r.int(f.length); f[at]! ^= 1 << r.int(8); }
      // a flipped length bit may announce more bytes than follow: the receiver rightly waits for them, so end our side
      return { frame: f, kind: 'bitflip', endAfter: true };
    }
    case 1: { const f = base(); return { frame: f.subarray(0, r.int(f.length)), kind: 'truncated', endAfter: true }; }
    case 2: { const f = base(); f.writeUInt32BE(r.pick(HUGE_LENGTHS), 0); return { frame: f, kind: 'frame-length', endAfter: true }; }
    case 3: { const f = extent(); f[5] = r.range(3, 255); return { frame: f, kind: 'codec' }; }
    case 4: { const f = extent(); if (f[5] === CODEC.ZERO) f[5] = CODEC.RAW; r.bytes(32).copy(f, 29); return { frame: f, kind: 'digest' }; }
    case 5: { const f = extent(); f.writeUInt32BE(r.chance(0.5) ? r.u32() : disks.length + r.int(3), 13); return { frame: f, kind: 'disk' }; }
    case 6: { const f = extent(); f.writeUIntBE(r.pick([d.capacity, d.capacity - 1, MAX_U48, 2 ** 40, r.int(MAX_U48)]), 17, 6); return { frame: f, kind: 'offset' }; }
    case 7: { const f = extent(); f.writeUInt32BE(r.pick([0, 1, 0xffffffff, MAX_DATA_EXTENT + 1, 2 ** 30 + 1, r.u32()]), 25); return { frame: f, kind: 'extent-length' }; }
    case 8: { const f = base(); f[4] = r.pick([0, FRAME.HELLO, FRAME.READY, FRAME.ACK, FRAME.ERROR, 7, 255, r.int(256)]); return { frame: f, kind: 'frame-type' }; }
    case 9: return { frame: bombFrame(r, disks, seq), kind: 'zstd-bomb' };
    case 10: {
      const body = r.pick<() => Buffer>([
        () => Buffer.from('{"token":'),
        () => Buffer.from('[1,2,3]'),
        () => Buffer.from('null'),
        () => Buffer.from(deepJson(30_000, 'array')),
        () => Buffer.from(deepJson(10_000, 'object')),
        () => Buffer.from(`{"token":${deepJson(30_000, 'array')}}`),
        () => Buffer.from(`{"token":${JSON.stringify(randomJson(r, 3))}}`),
        () => Buffer.from(JSON.stringify({ token: 'x'.repeat(MAX_JSON_FRAME) })),
        () => r.bytes(r.int(300)),
        () => Buffer.from('\xef\xbb\xbf{}', 'latin1'),
      ])();
      return { frame: rawFrame(FRAME.SYNC, body), kind: 'sync-json' };
    }
    case 11: { const f = extent(); f.writeUIntBE(r.pick([0, MAX_U48, r.int(MAX_U48), Math.max(0, seq - 5)]), 7, 6); return { frame: f, kind: 'seq-reordered' }; }
    case 12: {
      // a compressed extent whose header says another length than its frame's content size
      const n = extentLength(r, Math.min(d.capacity, 1 << 20));
      const data = someData(r, n);
      const claim = r.pick([n + 1, n * 2, 2 ** 32, 2 ** 40, Math.max(1, n - 1)]);
      return { frame: extentFrame({ codec: CODEC.ZSTD, seq, disk: d.disk, offset: 0, length: n, digest: sha(data) }, patchedSizeFrame(data, claim)), kind: 'zstd-size' };
    }
    case 13: return { frame: rawFrame(FRAME.EXTENT, r.bytes(r.int(EXTENT_HEADER * 2))), kind: 'random-extent' };
    case 14: {
      // a payload that is not zstd at all, or zstd cut short
      const f = extent();
      const n = f.readUInt32BE(25);
      const data = someData(r, n);
      const c = Buffer.from(compress(data));
      const payload = r.chance(0.5) ? c.subarray(0, r.int(c.length)) : r.bytes(r.range(1, 4096));
      return { frame: extentFrame({ codec: CODEC.ZSTD, seq, disk: f.readUInt32BE(13), offset: f.readUIntBE(17, 6), length: n, digest: sha(data) }, payload), kind: 'zstd-garbage' };
    }
    case 15: {
      // raw with a payload shorter or longer than its length
      const f = extent();
      const n = Math.max(1, f.readUInt32BE(25));
      const payload = r.bytes(r.chance(0.5) ? n - 1 : n + r.range(1, 100));
      return { frame: extentFrame({ codec: CODEC.RAW, seq, disk: f.readUInt32BE(13), offset: f.readUIntBE(17, 6), length: n, digest: sha(payload) }, payload), kind: 'raw-length' };
    }
    default: {
      // a zero marker with a payload, or longer than allowed
      const f = extentFrame({ codec: CODEC.ZERO, seq, disk: d.disk, offset: 0, length: r.pick([d.capacity, 2 ** 30 + 512, 1 << 20]), digest: Buffer.alloc(32) }, r.chance(0.5) ? r.bytes(r.range(1, 64)) : Buffer.alloc(0));
      return { frame: f, kind: 'zero-marker' };
    }
  }
}

/** A compressed extent whose payload would inflate to GiBs. */
export function bombFrame(r: Prng, disks: readonly DiskSpec[], seq: number): Buffer {
  const d = disks[0]!;
  const length = Math.min(d.capacity, 1 << 20);
  const good = Buffer.alloc(length, 0x41);
  const GiB = 2 ** 30;
  const payload = r.pick<() => Buffer>([
    () => Buffer.concat([compress(good), rleFrame(GiB)]),
    () => Buffer.concat([compress(good), rleFrame(GiB, { claim: GiB })]),
    () => rleFrame(4 * GiB),
    () => rleFrame(GiB, { claim: length }),
    () => rleFrame(length, { claim: 8 * GiB }),
    () => patchedSizeFrame(good, 16 * GiB),
  ])();
  return extentFrame({ codec: CODEC.ZSTD, seq, disk: d.disk, offset: 0, length, digest: sha(good) }, payload);
}

export interface HelloInput { frame: Buffer; kind: string; endAfter?: boolean }

/** The first frame of an unauthenticated or wrongly authenticated connection. */
export function hostileHello(r: Prng, known: { sourceId: string; credential: string; cycleId: string }, other: { sourceId: string }): HelloInput {
  const hello = (v: unknown): Buffer => encodeJsonFrame(FRAME.HELLO, v);
  const ok = { sourceId: known.sourceId, credential: known.credential, cycleId: known.cycleId, streamId: 'f00d' , wireVersion: WIRE_VERSION };
  switch (r.int(12)) {
    case 0: return { frame: hello({ ...ok, sourceId: hostileId(r) }), kind: 'hello-source-id' };
    case 1: return { frame: hello({ ...ok, cycleId: hostileId(r) }), kind: 'hello-cycle-id' };
    case 2: return { frame: hello({ ...ok, credential: r.pick(['', 'forged', 'x'.repeat(60_000), null, 7, ['a']]) }), kind: 'hello-credential' };
    case 3: return { frame: hello({ ...ok, sourceId: other.sourceId }), kind: 'hello-other-source' };
    case 4: return { frame: hello({ ...ok, streamId: r.pick(['', 'XYZ', 'a'.repeat(65), 5, null, '../x', 'f\0']) }), kind: 'hello-stream-id' };
    case 5: return { frame: hello({ ...ok, cycleId: 'not-open' }), kind: 'hello-not-open' };
    case 6: return { frame: rawFrame(FRAME.HELLO, r.pick([Buffer.from('{'), Buffer.from('[]'), Buffer.from(deepJson(30_000, 'array')), r.bytes(r.int(200))])), kind: 'hello-json' };
    case 7: return { frame: rawFrame(FRAME.HELLO, Buffer.from(JSON.stringify({ ...ok, pad: 'x'.repeat(MAX_JSON_FRAME) }))), kind: 'hello-oversized' };
    case 8: { const f = hello(ok); f.writeUInt32BE(r.pick(HUGE_LENGTHS), 0); return { frame: f, kind: 'hello-length', endAfter: true }; }
    case 9: { const f = hello(ok); return { frame: f.subarray(0, r.int(f.length)), kind: 'hello-truncated', endAfter: true }; }
    case 10: return { frame: r.chance(0.5) ? encodeJsonFrame(FRAME.SYNC, {}) : extentFrame({ codec: 0, seq: 1, disk: 0, offset: 0, length: 4, digest: sha(Buffer.alloc(4)) }, Buffer.alloc(4)), kind: 'no-hello' };
    default: return { frame: hello(randomJson(r, 3)), kind: 'hello-random' };
  }
}
