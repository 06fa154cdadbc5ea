import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseAbortCycle, parseBeginCycle, parseCommitCycle, parseRegister } from '../../src/receiver/requests.ts';
import { Refusal } from '../../src/receiver/open-cycles.ts';

/** BAD_REQUEST comes as a 400 Refusal; BAD_ID as assertId's error (refusalFrom makes it a 400). */
const refused = (code: string, msg: RegExp) => (e: unknown) => e instanceof Error && (e as { code?: string }).code === code && msg.test(e.message)
  && (code !== 'BAD_REQUEST' || (e instanceof Refusal && e.status === 400));
const disks = [{ disk: 0, capacity: 1 << 20, label: 'x'.repeat(300) }, { disk: 1, capacity: 4096 }];

test('register: the source id is checked; code and label are typed from what was sent', () => {
  assert.deepEqual(parseRegister({ sourceId: 'a-1', code: 'VML-1', label: 'l' }), { sourceId: 'a-1', code: 'VML-1', label: 'l' });
  assert.deepEqual(parseRegister({ sourceId: 'a-1', code: 7 }), { sourceId: 'a-1', code: '', label: null }, 'a code that is no string is no code');
  assert.throws(() => parseRegister({ sourceId: '../etc', code: 'c' }), refused('BAD_ID', /invalid source id/));
});

test('begin: ids, disks, maxImages and the base image are checked in that order; labels are cut to 200', () => {
  const b = parseBeginCycle({ cycleId: 'c1', disks, baseImageId: null, maxImages: 3, extra: true });
  assert.deepEqual(b, { cycleId: 'c1', disks: [{ disk: 0, capacity: 1 << 20, label: 'x'.repeat(200) }, { disk: 1, capacity: 4096 }], maxImages: 3, baseImageId: null });
  assert.deepEqual(parseBeginCycle({ cycleId: 'c1', disks, maxImages: null }), { cycleId: 'c1', disks: b.disks }, 'absent fields stay absent');
  assert.equal(parseBeginCycle({ cycleId: 'c1', disks, baseImageId: '4' }).baseImageId, '4');
  assert.equal(parseBeginCycle({ cycleId: 'c1', disks, estimatedBytes: 5 << 20 }).estimatedBytes, 5 << 20);
  for (const bad of [-1, 1.5, '5', 2 ** 60]) {
    assert.throws(() => parseBeginCycle({ cycleId: 'c1', disks, estimatedBytes: bad }), refused('BAD_REQUEST', /estimatedBytes/));
  }
  assert.throws(() => parseBeginCycle({ cycleId: 'C_1', disks: 'x' }), refused('BAD_ID', /invalid cycle id/));
  for (const bad of [undefined, [], Array(257).fill({ disk: 0, capacity: 512 })]) {
    assert.throws(() => parseBeginCycle({ cycleId: 'c1', disks: bad }), refused('BAD_REQUEST', /1\.\.256 disks/));
  }
  for (const bad of [[{ disk: 1, capacity: 512 }], [{ disk: 0, capacity: 100 }], [{ disk: 0, capacity: '512' }], [null], [7]]) {
    assert.throws(() => parseBeginCycle({ cycleId: 'c1', disks: bad }), refused('BAD_REQUEST', /disk 0: needs disk=0/));
  }
  for (const bad of [0, 11, 2.5, '3']) {
    assert.throws(() => parseBeginCycle({ cycleId: 'c1', disks, maxImages: bad }), refused('BAD_REQUEST', /outside 1\.\.10/));
  }
  assert.throws(() => parseBeginCycle({ cycleId: 'c1', disks, baseImageId: '../1' }), refused('BAD_ID', /invalid image id/));
});

test('begin: baseDisks needs one entry per disk, each a disk number or null', () => {
  assert.deepEqual(parseBeginCycle({ cycleId: 'c1', disks, baseImageId: '2', baseDisks: [1, null] }).baseDisks, [1, null]);
  for (const bad of [[0], [0, 1, 2], 'x', [0, -1], [0, 1.5], [0, '1']]) {
    assert.throws(() => parseBeginCycle({ cycleId: 'c1', disks, baseDisks: bad }), refused('BAD_REQUEST', /baseDisks/));
  }
});

test('commit: meta defaults to {}, digests count only with verify, and malformed ranges or digests are refused', () => {
  assert.deepEqual(parseCommitCycle({}), { meta: {}, verify: false });
  assert.deepEqual(parseCommitCycle({ meta: [1], sourceDigests: [{ disk: 'x' }] }), { meta: {}, verify: false }, 'no verify: digests are not read');
  const expected = [{ disk: 0, ranges: [{ offset: 0, length: 4096 }] }];
  const root = 'ab'.repeat(32);
  const sourceDigests = [{ disk: 0, sha256: 'ab' }, { disk: 1, tree: { ranges: [{ offset: 512, length: 512 }, { offset: 4096, length: 8192 }], root } }];
  assert.deepEqual(parseCommitCycle({ meta: { a: 1 }, expected, verify: true, sourceDigests, maxImages: 2 }),
    { meta: { a: 1 }, expected, verify: true, sourceDigests, maxImages: 2 });
  assert.throws(() => parseCommitCycle({ maxImages: 20 }), refused('BAD_REQUEST', /maxImages 20/));
  for (const bad of [[{ disk: 0 }], [{ disk: 0, ranges: [{ offset: -1, length: 1 }] }], [7]]) {
    assert.throws(() => parseCommitCycle({ expected: bad }), refused('BAD_REQUEST', /expected|range/));
  }
  const tree = (ranges: unknown, r: unknown = root) => [{ disk: 0, tree: { ranges, root: r } }];
  for (const bad of [[{ sha256: 'ab' }], [{ disk: 0, sha256: 5 }], [{ disk: 0, tree: {} }], tree([], 'ab'), tree({}),
    tree([{ offset: 0, length: -1 }]), tree([{ offset: 0, length: 0 }]), tree([{ offset: 4096, length: 512 }, { offset: 0, length: 512 }]),
    tree([{ offset: 0, length: 4096 }, { offset: 512, length: 512 }])]) {
    assert.throws(() => parseCommitCycle({ verify: true, sourceDigests: bad }), refused('BAD_REQUEST', /sourceDigests\[0\]/), JSON.stringify(bad));
  }
  // a tree without ranges covers the disk's expected ranges
  assert.deepEqual(parseCommitCycle({ expected, verify: true, sourceDigests: [{ disk: 0, tree: { root } }] }).sourceDigests,
    [{ disk: 0, tree: { ranges: expected[0]!.ranges, root } }]);
  assert.throws(() => parseCommitCycle({ expected, verify: true, sourceDigests: [{ disk: 1, tree: { root } }] }), refused('BAD_REQUEST', /expects none of disk 1/));
  // the per-read list of older senders (unbounded) is refused by name
  assert.throws(() => parseCommitCycle({ verify: true, sourceDigests: [{ disk: 0, extents: [{ offset: 0, length: 512, sha256: 'cd' }] }] }),
    refused('BAD_REQUEST', /extents is the form of an older vmlift/));
});

test('abort: disks are optional, and checked when given', () => {
  assert.deepEqual(parseAbortCycle({}), {});
  assert.deepEqual(parseAbortCycle({ disks: [{ disk: 0, capacity: 512 }] }), { disks: [{ disk: 0, capacity: 512 }] });
  assert.throws(() => parseAbortCycle({ disks: [] }), refused('BAD_REQUEST', /1\.\.256 disks/));
});
