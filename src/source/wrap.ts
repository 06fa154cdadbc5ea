import type { BlockSource } from './types.ts';

/** What a wrapper replaces; a member left out, or given as undefined, is the inner source's own. */
export type SourceOverrides = Partial<BlockSource>;

/**
 * A source that is `inner` but for `overrides`, the way an nbdkit filter sits over `next_ops`:
 * every member not replaced is read from `inner` when asked (getters stay live, an optional
 * member such as `readInto` or `extents` exists only when `inner` has it, and a reader's own
 * members, such as VDDK's transportMode, still show through any stack of wrappers). A Proxy
 * does the forwarding, so the wrapper need not know the members of what it wraps.
 */
export function wrapSource<S extends BlockSource>(inner: S, overrides: SourceOverrides): S {
  const bound = new WeakMap<object, unknown>();
  const replaced = (key: PropertyKey): boolean =>
    Object.hasOwn(overrides, key) && Reflect.get(overrides, key) !== undefined;
  return new Proxy(inner, {
    get(target, key) {
      if (replaced(key)) return Reflect.get(overrides, key);
      const value: unknown = Reflect.get(target, key, target);
      if (typeof value !== 'function') return value;
      // The inner source's methods run on the inner source, never on the wrapper.
      let b = bound.get(value);
      if (!b) bound.set(value, (b = value.bind(target)));
      return b;
    },
    has(target, key) {
      return replaced(key) || Reflect.has(target, key);
    },
  });
}
