/** Cycle ids: unique even when many jobs start a cycle in the same millisecond, valid as ids, in start order. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { newCycleId } from '../../src/engine/jobs.ts';
import { isValidId } from '../../src/util/ids.ts';

test('cycle ids made in one burst are unique, valid ids, and sort by time', async () => {
  const burst = Array.from({ length: 5000 }, () => newCycleId());
  assert.equal(new Set(burst).size, burst.length, 'no two cycles of one millisecond share an id');
  for (const id of burst.slice(0, 50)) assert.ok(isValidId(id), id);
  const earlier = newCycleId();
  await new Promise((r) => setTimeout(r, 5));
  assert.ok(newCycleId() > earlier, 'a later cycle sorts after an earlier one');
});
