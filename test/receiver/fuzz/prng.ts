import { createCipheriv } from 'node:crypto';

/** A small seeded PRNG (sfc32) so that a fuzz run is repeated exactly from its printed seed. */
export class Prng {
  private a: number; private b: number; private c: number; private d: number;
  constructor(readonly seed: number) {
    this.a = 0x9e3779b9; this.b = 0x243f6a88; this.c = 0xb7e15162; this.d = seed >>> 0;
    for (let i = 0; i < 16; i++) this.u32();
  }
  u32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }
  /** 0 ≤ n < max. */
  int(max: number): number { return max <= 0x100000000 ? Math.floor((this.u32() / 0x100000000) * max) : Math.floor(this.float() * max); }
  range(min: number, max: number): number { return min + this.int(max - min + 1); }
  float(): number { return (this.u32() * 0x200000 + (this.u32() >>> 11)) / 2 ** 53; }
  chance(p: number): boolean { return this.float() < p; }
  pick<T>(xs: readonly T[]): T { return xs[this.int(xs.length)]!; }
  /** `n` bytes: an AES-CTR key stream keyed from this generator (fast, and as repeatable as the rest). */
  bytes(n: number): Buffer {
    const key = Buffer.allocUnsafe(32);
    for (let i = 0; i < 32; i += 4) key.writeUInt32LE(this.u32(), i);
    return createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16)).update(Buffer.alloc(n));
  }
  /** A child generator (one per worker), so workers do not depend on each other's timing. */
  fork(): Prng { return new Prng(this.u32()); }
}
