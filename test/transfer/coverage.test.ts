import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CycleCoverage } from '../../src/transfer/coverage.ts';

test('a send is skipped only when the receiver holds all of it and this session sent none of it', () => {
  const c = new CycleCoverage();
  c.setHeld([{ disk: 0, ranges: [{ offset: 0, length: 4096 }] }]);
  assert.ok(c.alreadyHeld(0, 0, 4096));
  assert.ok(c.alreadyHeld(0, 1024, 1024));
  assert.ok(!c.alreadyHeld(0, 0, 4097), 'not all of it');
  assert.ok(!c.alreadyHeld(1, 0, 10), 'another disk');
  c.recordSent(0, 2048, 10);
  assert.ok(!c.alreadyHeld(0, 0, 4096), 'sent again in this session: a newer version, not skipped');
  assert.ok(c.heldCovers(0, 0, 4096), 'still held');
});

test('a piece overwrites when it overlaps what was held or sent before', () => {
  const c = new CycleCoverage();
  c.setHeld([{ disk: 0, ranges: [{ offset: 8192, length: 4096 }] }]);
  assert.equal(c.recordSent(0, 0, 4096), false);
  assert.equal(c.recordSent(0, 4096, 4096), false, 'touching is not overlapping');
  assert.equal(c.recordSent(0, 4000, 200), true, 'sent before');
  assert.equal(c.recordSent(0, 12000, 100), true, 'held');
  assert.equal(c.recordSent(1, 0, 4096), false, 'disks are apart');
});

test('the commit expects per disk everything held or sent; a re-begin replaces what is held', () => {
  const c = new CycleCoverage();
  const disks = [{ disk: 0, capacity: 1 << 20 }, { disk: 1, capacity: 1 << 20 }];
  c.setHeld([{ disk: 0, ranges: [{ offset: 0, length: 4096 }] }]);
  c.recordSent(0, 4096, 4096);
  c.recordSent(0, 65536, 512);
  assert.deepEqual(c.expected(disks), [
    { disk: 0, ranges: [{ offset: 0, length: 8192 }, { offset: 65536, length: 512 }] },
    { disk: 1, ranges: [] },
  ]);
  c.setHeld([{ disk: 1, ranges: [{ offset: 512, length: 512 }] }]);
  assert.ok(!c.heldCovers(0, 0, 4096));
  assert.deepEqual(c.expected(disks), [
    { disk: 0, ranges: [{ offset: 4096, length: 4096 }, { offset: 65536, length: 512 }] },
    { disk: 1, ranges: [{ offset: 512, length: 512 }] },
  ]);
});
