import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planDiskSync } from '../../src/engine/sync-plan.ts';

test('changeIds: incremental only within one CBT epoch and with the base image present', () => {
  assert.match((planDiskSync('garbage', 'u1/2', true) as { reason: string }).reason, /unparseable/);
  assert.match((planDiskSync('u1/9', 'u1/2', true) as { reason: string }).reason, /went backwards/);
  assert.deepEqual(planDiskSync('u1/4', 'u1/9', true), { mode: 'incremental', sinceChangeId: 'u1/4' });
  assert.match((planDiskSync('u1/4', 'u2/1', true) as { reason: string }).reason, /CBT was reset/);
  assert.match((planDiskSync(null, 'u1/1', true) as { reason: string }).reason, /first cycle/);
  assert.match((planDiskSync('u1/4', 'u1/5', false) as { reason: string }).reason, /does not hold the previous image/);
  assert.match((planDiskSync('u1/4', null, true) as { reason: string }).reason, /CBT is off/);
});
