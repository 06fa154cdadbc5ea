/**
 * User compression level (0–10) → zstd level, chosen with bench/codec-levels.ts (figures in
 * docs/transfer.md): on two cores zstd 3 and above packs slower than a 10 Gbit/s link carries
 * uncompressed, so the default (7) maps to zstd 1, the fast negative levels fill 1–6, and only
 * 8–10 trade speed for ratio (for slow links).
 */
export const ZSTD_LEVEL_MAP: readonly (number | null)[] = [null, -9, -7, -5, -4, -3, -1, 1, 3, 6, 9];

export const DEFAULT_COMPRESSION = 7;

export function zstdLevelFor(level: number): number | null {
  if (!Number.isInteger(level) || level < 0 || level > 10) {
    throw new RangeError(`compression level ${level} is outside 0..10`);
  }
  return ZSTD_LEVEL_MAP[level]!;
}
