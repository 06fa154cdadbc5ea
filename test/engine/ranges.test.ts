import { test } from 'node:test';
import assert from 'node:assert/strict';
import { coalesce, split, subtract, totalLength } from '../../src/util/ranges.ts';
import { planDiskSync } from '../../src/engine/sync-plan.ts';

const r = (offset: number, length: number) => ({ offset, length });

test('coalesce merges touching and overlapping ranges', () => {
  assert.deepEqual(coalesce([r(10, 5), r(0, 10), r(12, 10), r(40, 1), r(50, 0)]), [r(0, 22), r(40, 1)]);
});

test('subtract removes held ranges, keeping the rest exactly', () => {
  assert.deepEqual(subtract([r(0, 100)], [r(10, 10), r(50, 60)]), [r(0, 10), r(20, 30)]);
  assert.deepEqual(subtract([r(0, 10), r(20, 10)], [r(0, 30)]), []);
  assert.deepEqual(subtract([r(0, 10)], []), [r(0, 10)]);
});

test('split cuts on aligned boundaries and keeps every byte once', () => {
  const pieces = [...split([r(3, 20), r(40, 8)], 8)];
  assert.deepEqual(pieces, [r(3, 5), r(8, 8), r(16, 7), r(40, 8)]);
  assert.equal(totalLength(pieces), 28);
});

test('changeIds: incremental only within one CBT epoch and with the base image present', () => {
  assert.match((planDiskSync('garbage', 'u1/2', true) as { reason: string }).reason, /unparseable/);
  assert.match((planDiskSync('u1/9', 'u1/2', true) as { reason: string }).reason, /went backwards/);
  assert.deepEqual(planDiskSync('u1/4', 'u1/9', true), { mode: 'incremental', sinceChangeId: 'u1/4' });
  assert.match((planDiskSync('u1/4', 'u2/1', true) as { reason: string }).reason, /CBT was reset/);
  assert.match((planDiskSync(null, 'u1/1', true) as { reason: string }).reason, /first cycle/);
  assert.match((planDiskSync('u1/4', 'u1/5', false) as { reason: string }).reason, /does not hold the previous image/);
  assert.match((planDiskSync('u1/4', null, true) as { reason: string }).reason, /CBT is off/);
});
