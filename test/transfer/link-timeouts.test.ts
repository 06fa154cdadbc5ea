import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_LINK_TIMEOUTS, linkTimeouts } from '../../src/transfer/link-timeouts.ts';

test('link timeouts: defaults, partial overrides, and refusal of values that would never or always trip', () => {
  assert.deepEqual(linkTimeouts(undefined), { connectMs: 15_000, ackMs: 120_000, requestMs: 120_000, commitMs: 1_800_000 });
  assert.deepEqual(linkTimeouts({ ackMs: 2000 }), { ...DEFAULT_LINK_TIMEOUTS, ackMs: 2000 });
  for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
    assert.throws(() => linkTimeouts({ requestMs: bad }), /link timeout requestMs must be a positive number of ms/);
  }
});
