import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Semaphore } from '../../src/util/semaphore.ts';

test('a semaphore holds at most its limit, serves waiters in order, and a release counts once', async () => {
  const s = new Semaphore(2);
  const r1 = await s.acquire();
  const r2 = await s.acquire();
  assert.equal(s.inUse, 2);
  const order: number[] = [];
  const w3 = s.acquire().then((r) => { order.push(3); return r; });
  const w4 = s.acquire().then((r) => { order.push(4); return r; });
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, [], 'nobody gets past the limit');
  r1(); r1();
  const r3 = await w3;
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, [3], 'a second release of the same slot frees nothing more');
  r2();
  const r4 = await w4;
  assert.deepEqual(order, [3, 4]);
  assert.equal(s.inUse, 2);
  r3(); r4();
  assert.equal(s.inUse, 0);
});

test('a lowered limit admits nobody new until holders release below it; a raised one wakes waiters at once', async () => {
  const s = new Semaphore(3);
  const held = [await s.acquire(), await s.acquire(), await s.acquire()];
  s.setLimit(1);
  let got = false;
  const w = s.acquire().then((r) => { got = true; return r; });
  held.pop()!(); held.pop()!();
  await new Promise((r) => setImmediate(r));
  assert.equal(got, false, 'one holder left, limit 1: the waiter still waits');
  s.setLimit(2);
  const r = await w;
  assert.equal(s.inUse, 2);
  assert.equal(s.limit, 2);
  r(); held.pop()!();
  assert.equal(s.inUse, 0);
});
