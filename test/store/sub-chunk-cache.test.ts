import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SubChunkCache, type CachedSub } from '../../src/store/sub-chunk-cache.ts';

const entry = (sub: number, bytes: number, dirty = true): CachedSub => ({ disk: 0, slot: 1, sub, buf: Buffer.alloc(bytes), dirty });
const subs = (list: CachedSub[]) => list.map((e) => e.sub);

test('over its bound the cache gives up its least recently used entries (get counts as a use); the newest one always stays', () => {
  const c = new SubChunkCache(300);
  for (let k = 0; k < 3; k++) c.add(entry(k, 100));
  assert.deepEqual(c.evict(), [], 'at the bound, nothing goes');
  assert.equal(c.get(0, 1, 0)?.sub, 0); // sub 0 is now the most recently used
  assert.equal(c.get(0, 2, 0), undefined, 'another slot');
  c.add(entry(3, 100));
  assert.deepEqual(subs(c.evict()), [1]);
  assert.equal(c.bytes, 300);
  c.add(entry(4, 500)); // alone above the bound
  assert.deepEqual(subs(c.evict()), [2, 0, 3]);
  assert.equal(c.size, 1);
  assert.equal(c.bytes, 500);
  assert.equal(c.get(0, 1, 4)?.buf.length, 500);
});

test('drop forgets an entry and its bytes; dirty() lists only the patched ones; clear empties the cache', () => {
  const c = new SubChunkCache(1 << 20);
  c.add(entry(0, 100));
  c.add(entry(1, 200, false));
  c.add({ ...entry(0, 300), disk: 1 });
  c.drop(0, 1, 0);
  c.drop(0, 1, 9); // not cached: nothing happens
  assert.equal(c.bytes, 500);
  assert.equal(c.get(0, 1, 0), undefined);
  assert.deepEqual(c.dirty().map((e) => [e.disk, e.sub]), [[1, 0]]);
  c.clear();
  assert.equal(c.bytes, 0);
  assert.equal(c.size, 0);
  assert.deepEqual(c.evict(), []);
});
