/** Values that go where ids, strings and numbers go: path escapes, NUL, unicode, huge and odd. */
import type { Prng } from './prng.ts';

/** Every fuzzed id carries this, so a file named after one can be searched for afterwards. */
export const MARK = 'fzmark';

export function hostileId(r: Prng): string {
  return r.pick<() => string>([
    () => `../${MARK}`,
    () => `../../${MARK}/../../etc/passwd`,
    () => `..%2f${MARK}`,
    () => `${MARK}\0.json`,
    () => `${MARK}/x`,
    () => `/tmp/${MARK}`,
    () => `${MARK}\\..\\x`,
    () => `${MARK}-é-日本-🙂`,
    () => `${MARK.toUpperCase()}`,
    () => `-${MARK}`,
    () => `${MARK}-${'a'.repeat(100_000)}`,
    () => `${MARK}-${'a'.repeat(60)}`, // 67 chars: one past the limit
    () => '',
    () => '.',
    () => '..',
    () => `${MARK}\n`,
    () => `${MARK} x`,
    () => `${MARK}%00`,
    () => `\u202e${MARK}`,
  ])();
}

export function oddNumber(r: Prng): unknown {
  return r.pick<unknown>([-1, 0, 1, 0.5, -0.0, 2 ** 31, 2 ** 32, 2 ** 48, 2 ** 53, 2 ** 53 + 2, 1e308, -1e308, Number.MAX_SAFE_INTEGER,
    '1', '0x10', null, true, [], {}, 'NaN', 512, 4096, 1 << 20, 511, 513, 255, 256, 257, 10, 11]);
}

export function oddString(r: Prng): unknown {
  return r.pick<() => unknown>([
    () => 'x'.repeat(100_000),
    () => '\0',
    () => '\ud800',
    () => '🙂'.repeat(1000),
    () => '',
    () => 42,
    () => null,
    () => ['a'],
    () => ({ a: 1 }),
    () => hostileId(r),
  ])();
}

/** JSON text nested `depth` deep (arrays or objects). */
export function deepJson(depth: number, kind: 'array' | 'object'): string {
  return kind === 'array' ? '['.repeat(depth) + ']'.repeat(depth) : '{"a":'.repeat(depth) + '1' + '}'.repeat(depth);
}

/** Any JSON value, at most `depth` deep. */
export function randomJson(r: Prng, depth = 3): unknown {
  const k = r.int(depth > 0 ? 9 : 6);
  switch (k) {
    case 0: return null;
    case 1: return r.chance(0.5);
    case 2: return oddNumber(r);
    case 3: return r.pick(['', 'a', 'c1', 'VML-', '0', 'zstd', '__proto__']);
    case 4: return oddString(r);
    case 5: return r.int(1000);
    case 6: return Array.from({ length: r.int(5) }, () => randomJson(r, depth - 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = r.int(5); i > 0; i--) o[r.pick(['a', 'disk', 'capacity', 'offset', 'length', 'ranges', 'root', 'sha256', '__proto__', 'constructor', 'tree', 'meta'])] = randomJson(r, depth - 1);
      return o;
    }
  }
}
