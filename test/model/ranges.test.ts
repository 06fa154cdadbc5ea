import { test } from 'node:test';
import assert from 'node:assert/strict';
import { coalesce, firstUncovered, RangeSet, split, subtract, totalLength, type Range } from '../../src/model/ranges.ts';

const r = (offset: number, length: number): Range => ({ offset, length });

test('coalesce merges touching and overlapping ranges', () => {
  assert.deepEqual(coalesce([r(10, 5), r(0, 10), r(12, 10), r(40, 1), r(50, 0)]), [r(0, 22), r(40, 1)]);
});

test('coalesce: empty input, zero lengths, contained ranges, input left untouched', () => {
  assert.deepEqual(coalesce([]), []);
  assert.deepEqual(coalesce([r(5, 0), r(0, 0)]), []);
  assert.deepEqual(coalesce([r(0, 1), r(3, 0), r(5, 1)]), [r(0, 1), r(5, 1)]);
  assert.deepEqual(coalesce([r(0, 10), r(10, 5)]), [r(0, 15)]);
  assert.deepEqual(coalesce([r(0, 10), r(11, 5)]), [r(0, 10), r(11, 5)]);
  assert.deepEqual(coalesce([r(0, 100), r(10, 5)]), [r(0, 100)]);
  const input = [r(10, 10), r(0, 10)];
  coalesce(input);
  assert.deepEqual(input, [r(10, 10), r(0, 10)]);
});

test('subtract removes held ranges, keeping the rest exactly', () => {
  assert.deepEqual(subtract([r(0, 100)], [r(10, 10), r(50, 60)]), [r(0, 10), r(20, 30)]);
  assert.deepEqual(subtract([r(0, 10), r(20, 10)], [r(0, 30)]), []);
  assert.deepEqual(subtract([r(0, 10)], []), [r(0, 10)]);
});

test('subtract: empty input, touching and zero-length holes, unsorted overlapping input', () => {
  assert.deepEqual(subtract([], [r(0, 10)]), []);
  assert.deepEqual(subtract([], []), []);
  assert.deepEqual(subtract([r(10, 10)], [r(0, 10), r(20, 5)]), [r(10, 10)]);
  assert.deepEqual(subtract([r(0, 10)], [r(5, 0)]), [r(0, 10)]);
  assert.deepEqual(subtract([r(0, 100)], [r(60, 10), r(5, 10), r(10, 10)]), [r(0, 5), r(20, 40), r(70, 30)]);
  assert.deepEqual(subtract([r(50, 10), r(0, 20), r(10, 20)], [r(25, 30)]), [r(0, 25), r(55, 5)]);
  assert.deepEqual(subtract([r(0, 10), r(10, 10)], []), [r(0, 20)]);
});

test('split cuts on aligned boundaries and keeps every byte once', () => {
  const pieces = [...split([r(3, 20), r(40, 8)], 8)];
  assert.deepEqual(pieces, [r(3, 5), r(8, 8), r(16, 7), r(40, 8)]);
  assert.equal(totalLength(pieces), 28);
});

test('split: empty input, zero lengths, exact boundaries, touching ranges stay apart', () => {
  assert.deepEqual([...split([], 8)], []);
  assert.deepEqual([...split([r(5, 0)], 8)], []);
  assert.deepEqual([...split([r(0, 16)], 8)], [r(0, 8), r(8, 8)]);
  assert.deepEqual([...split([r(9, 3)], 8)], [r(9, 3)]);
  assert.deepEqual([...split([r(4, 4)], 8)], [r(4, 4)]);
  assert.deepEqual([...split([r(0, 4), r(4, 4)], 8)], [r(0, 4), r(4, 4)]);
  function* lazy(): Generator<Range> { yield r(6, 4); }
  assert.deepEqual([...split(lazy(), 4)], [r(6, 2), r(8, 2)]);
  assert.equal(totalLength([]), 0);
});

test('firstUncovered finds the first gap of want in have', () => {
  assert.equal(firstUncovered([], []), null);
  assert.equal(firstUncovered([], [r(0, 10)]), null);
  assert.equal(firstUncovered([r(5, 0)], []), null);
  assert.deepEqual(firstUncovered([r(5, 10)], []), r(5, 10));
  assert.equal(firstUncovered([r(10, 10)], [r(0, 100)]), null);
  assert.equal(firstUncovered([r(0, 20)], [r(0, 10), r(10, 10)]), null, 'touching have ranges cover without a gap');
  assert.deepEqual(firstUncovered([r(0, 30)], [r(0, 10), r(20, 10)]), r(10, 10));
  assert.deepEqual(firstUncovered([r(0, 30)], [r(5, 30)]), r(0, 5));
  assert.deepEqual(firstUncovered([r(0, 30)], [r(0, 20)]), r(20, 10));
  assert.deepEqual(firstUncovered([r(20, 5), r(0, 10)], [r(0, 10)]), r(20, 5), 'want may be unsorted');
  assert.deepEqual(firstUncovered([r(0, 5), r(50, 5)], [r(0, 10), r(52, 10)]), r(50, 2));
});

test('RangeSet: empty set', () => {
  const s = new RangeSet();
  assert.equal(s.size, 0);
  assert.deepEqual(s.toRanges(), []);
  assert.equal(s.total(), 0);
  assert.equal(s.contains(0, 1), false);
  assert.equal(s.overlaps(0, 1), false);
  assert.equal(RangeSet.from([]).size, 0);
});

test('RangeSet.add merges touching, overlapping and contained ranges and ignores empty ones', () => {
  const s = new RangeSet();
  s.add(0, 10); s.add(10, 5);
  assert.deepEqual(s.toRanges(), [r(0, 15)]);
  const left = new RangeSet();
  left.add(10, 5); left.add(5, 5);
  assert.deepEqual(left.toRanges(), [r(5, 10)]);
  const apart = new RangeSet();
  apart.add(20, 5); apart.add(0, 5); apart.add(10, 5);
  assert.deepEqual(apart.toRanges(), [r(0, 5), r(10, 5), r(20, 5)]);
  assert.equal(apart.size, 3);
  assert.equal(apart.total(), 15);
  apart.add(3, 20);
  assert.deepEqual(apart.toRanges(), [r(0, 25)]);
  apart.add(10, 10);
  assert.deepEqual(apart.toRanges(), [r(0, 25)]);
  apart.add(40, 0); apart.add(40, -3);
  assert.deepEqual(apart.toRanges(), [r(0, 25)]);
  assert.deepEqual(RangeSet.from([r(20, 5), r(0, 10), r(10, 5), r(40, 0)]).toRanges(), [r(0, 15), r(20, 5)]);
});

test('RangeSet.contains and overlaps at the edges of ranges and gaps', () => {
  const s = RangeSet.from([r(0, 10), r(20, 10)]);
  assert.equal(s.contains(0, 10), true);
  assert.equal(s.contains(5, 5), true);
  assert.equal(s.contains(20, 10), true);
  assert.equal(s.contains(5, 10), false);
  assert.equal(s.contains(10, 10), false);
  assert.equal(s.contains(25, 10), false);
  assert.equal(s.contains(0, 30), false);
  assert.equal(s.overlaps(9, 1), true);
  assert.equal(s.overlaps(10, 10), false, 'exactly the gap');
  assert.equal(s.overlaps(10, 11), true);
  assert.equal(s.overlaps(15, 10), true);
  assert.equal(s.overlaps(30, 5), false);
});

test('every helper matches a byte-by-byte model on random ranges', () => {
  const SPAN = 256;
  let seed = 12345;
  const rand = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return (seed >>> 12) % n; };
  const randomRanges = (): Range[] => Array.from({ length: rand(12) }, () => r(rand(200), rand(30)));
  const bytes = (ranges: readonly Range[]): boolean[] => {
    const b = new Array<boolean>(SPAN).fill(false);
    for (const x of ranges) for (let i = x.offset; i < x.offset + x.length; i++) b[i] = true;
    return b;
  };
  const runs = (b: readonly boolean[]): Range[] => {
    const out: Range[] = [];
    for (let i = 0; i < SPAN; i++) {
      if (!b[i]) continue;
      const start = i;
      while (i < SPAN && b[i]) i++;
      out.push(r(start, i - start));
    }
    return out;
  };
  for (let round = 0; round < 500; round++) {
    const want = randomRanges();
    const have = randomRanges();
    const w = bytes(want);
    const h = bytes(have);
    const rest = runs(w.map((x, i) => x && !h[i]));
    assert.deepEqual(coalesce(want), runs(w));
    assert.deepEqual(subtract(want, have), rest);
    assert.equal(totalLength(coalesce(want)), w.filter(Boolean).length);
    assert.deepEqual(firstUncovered(want, coalesce(have)), rest[0] ?? null);
    const set = RangeSet.from(want);
    assert.deepEqual(set.toRanges(), runs(w));
    assert.equal(set.total(), w.filter(Boolean).length);
    for (let q = 0; q < 20; q++) {
      const offset = rand(220); const length = 1 + rand(30);
      const inside = w.slice(offset, offset + length);
      assert.equal(set.contains(offset, length), inside.length === length && inside.every(Boolean), `contains(${offset}, ${length})`);
      assert.equal(set.overlaps(offset, length), inside.some(Boolean), `overlaps(${offset}, ${length})`);
    }
    const pieces = [...split(coalesce(want), 16)];
    assert.ok(pieces.every((p) => p.length > 0 && Math.floor(p.offset / 16) === Math.floor((p.offset + p.length - 1) / 16)));
    assert.deepEqual(coalesce(pieces), coalesce(want));
    assert.equal(totalLength(pieces), totalLength(coalesce(want)));
  }
});
