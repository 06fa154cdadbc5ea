import { test } from 'node:test';
import assert from 'node:assert/strict';
import { baseDiskMapping, diskListChange, positionalMapping, recordedIdentities } from '../../src/engine/disk-identity.ts';
import type { ImageInfo } from '../../src/model/images.ts';

const image = (meta: Record<string, unknown>, disks = 2): ImageInfo => ({
  sourceId: 's', imageId: '1', seq: 1, committedAt: '', cycleId: 'c', baseImageId: null, meta,
  disks: Array.from({ length: disks }, (_, i) => ({ disk: i, capacity: 1 << 20, allocatedBytes: 0, chunkCount: 0 })),
});

test('diskListChange: the same disks at the same positions, or why not', () => {
  const a = { key: 2000, uuid: 'a' }; const b = { key: 2001, uuid: 'b' }; const c = { key: 2016, uuid: 'c' };
  const base = recordedIdentities(image({ diskIdentities: [a, b, c] }, 3));
  assert.equal(diskListChange(base, [a, b, c], 3), null);
  assert.equal(diskListChange(base, [a, c], 3), 'disks changed: disk 2001 (b) removed, disk 2016 (c) moved from position 2 to 1');
  assert.equal(diskListChange(base, [a, { key: 2001, uuid: 'z' }, c], 3), 'disks changed: disk 2001 (b) removed, disk 2001 (z) added');
  assert.equal(diskListChange(recordedIdentities(image({ diskIdentities: [a, c] })), [a, b, c], 2), 'disks changed: disk 2016 (c) moved from position 1 to 2, disk 2001 (b) added');
});

test('diskListChange: images that recorded only keys compare keys; images that recorded nothing compare counts', () => {
  const legacy = recordedIdentities(image({ diskKeys: [2000, 2016] }));
  assert.equal(diskListChange(legacy, [{ key: 2000, uuid: 'a' }, { key: 2016, uuid: 'c' }], 2), null);
  assert.match(diskListChange(legacy, [{ key: 2016, uuid: 'c' }], 2)!, /disk 2000 removed, disk 2016 \(c\) moved from position 1 to 0/);
  assert.equal(recordedIdentities(image({})), null);
  assert.equal(diskListChange(null, [{ key: 2000, uuid: 'a' }, { key: 2016, uuid: 'c' }], 2), null);
  assert.match(diskListChange(null, [{ key: 2000, uuid: 'a' }], 2)!, /2 in the previous image, 1 now/);
});

test('baseDiskMapping: each disk starts from the base disk with its identity, new ones from none', () => {
  const a = { key: 2000, uuid: 'a' }; const b = { key: 2001, uuid: 'b' }; const c = { key: 2016, uuid: 'c' };
  const base = recordedIdentities(image({ diskIdentities: [a, b, c] }, 3));
  assert.deepEqual(baseDiskMapping(base, [a, b, c], 3), [0, 1, 2]);
  assert.deepEqual(baseDiskMapping(base, [a, c], 3), [0, 2], 'a moved disk keeps its own base');
  assert.deepEqual(baseDiskMapping(base, [c, a], 3), [2, 0], 'reordered');
  assert.deepEqual(baseDiskMapping(base, [a, { key: 2001, uuid: 'z' }, c], 3), [0, null, 2], 'another disk under a known key is new');
  assert.deepEqual(baseDiskMapping(recordedIdentities(image({ diskKeys: [2000, 2016] })), [a, b, c], 2), [0, null, 1], 'legacy images: by key');
  assert.deepEqual(baseDiskMapping(null, [a, c], 2), [0, 1], 'nothing recorded, same count: by position');
  assert.deepEqual(baseDiskMapping(null, [a], 2), [null], 'nothing recorded, other count: nothing matched');
  assert.deepEqual(positionalMapping(3, 2), [0, 1, null]);
});
