/** A small seeded PRNG (mulberry32): every choice of a chaos trial comes from its seed, so a trial replays. */
export class Rng {
  private s: number;
  constructor(seed: number) { this.s = seed >>> 0; }
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number { return lo + Math.floor(this.next() * (hi - lo + 1)); }
  pick<T>(xs: readonly T[]): T { return xs[Math.floor(this.next() * xs.length)]!; }
  /** `k` distinct integers of [0, n), in random order. */
  distinct(k: number, n: number): number[] {
    const all = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) { const j = Math.floor(this.next() * (i + 1)); [all[i], all[j]] = [all[j]!, all[i]!]; }
    return all.slice(0, k);
  }
  /** Random bytes from the stream (a trial's data replays too). */
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(Math.floor(this.next() * 4294967296), i);
    for (; i < n; i++) b[i] = Math.floor(this.next() * 256);
    return b;
  }
}

/** The seed of trial `index` of `process` in a run seeded `seed` (printed with every trial: `--seed S --trial I` replays it). */
export function trialSeed(seed: number, process: string, index: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (const c of `${process}:${index}`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return h;
}
