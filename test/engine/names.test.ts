import { test } from 'node:test';
import assert from 'node:assert/strict';
import { description, diskSelection, jobName, selectDisks, workgroupName } from '../../src/engine/names.ts';
import { UserError } from '../../src/util/errors.ts';
import { DEFAULT_SETTINGS } from '../../src/engine/settings.ts';

const refused = (fn: () => unknown, code: string, re: RegExp) =>
  assert.throws(fn, (e: unknown) => e instanceof UserError && e.code === code && re.test(e.message) && !!e.fix, re.source);

test('workgroup display names: 2-64 characters, a letter or CJK character first, then letters, digits and : . _ -, no http(s)://', () => {
  for (const ok of ['ab', 'Wave-1', 'wave_1.a:b', '迁移第一批', '移行-1', 'Ünïcode', 'x'.repeat(64)]) assert.equal(workgroupName(ok), ok);
  refused(() => workgroupName('a'), 'BAD_NAME', /has 1 characters/);
  refused(() => workgroupName('a'.repeat(65)), 'BAD_NAME', /has 65 characters/);
  refused(() => workgroupName('1wave'), 'BAD_NAME', /does not start with a letter/);
  refused(() => workgroupName('-wave'), 'BAD_NAME', /does not start with a letter/);
  refused(() => workgroupName('wave/1'), 'BAD_NAME', /holds "\/"/);
  refused(() => workgroupName('http://x.y'), 'BAD_NAME', /starts with http:\/\//);
  refused(() => workgroupName('HTTPS://x'), 'BAD_NAME', /starts with HTTPS:\/\//);
  assert.equal(workgroupName('httpd-servers'), 'httpd-servers', 'only the URL prefixes are refused');
});

test('job names and descriptions', () => {
  assert.equal(jobName('Web 01 (prod)'), 'Web 01 (prod)');
  refused(() => jobName(' '), 'BAD_NAME', /1 to 128 printable/);
  refused(() => jobName('a\u0007b'), 'BAD_NAME', /printable/);
  assert.equal(description(''), '');
  assert.equal(description('two\nlines'), 'two\nlines');
  refused(() => description('x'.repeat(257)), 'BAD_DESCRIPTION', /at most 256/);
});

test('disk selections: by position or by device key, checked against the VM\'s disks', () => {
  assert.deepEqual(diskSelection({ include: '2, 0,2' }), { include: [0, 2] });
  assert.deepEqual(diskSelection({ exclude: '2001' }), { exclude: [2001] });
  assert.equal(diskSelection({}), null);
  refused(() => diskSelection({ include: '0', exclude: '2001' }), 'BAD_DISKS', /exclude each other/);
  refused(() => diskSelection({ include: '-1' }), 'BAD_DISKS', /whole numbers, got "-1"/);
  refused(() => diskSelection({ include: ',' }), 'BAD_DISKS', /names no disk/);
  const disks = [{ key: 2000 }, { key: 2001 }, { key: 2016 }];
  assert.deepEqual(selectDisks(disks, { include: [0, 2] }, 'vm-1').map((d) => d.key), [2000, 2016]);
  assert.deepEqual(selectDisks(disks, { exclude: [2001] }, 'vm-1').map((d) => d.key), [2000, 2016]);
  assert.equal(selectDisks(disks, null, 'vm-1'), disks);
  refused(() => selectDisks(disks, { include: [3] }, 'vm-1'), 'NO_SUCH_DISK', /has 3 disk\(s\) \(positions 0–2\); --disks names 3/);
  refused(() => selectDisks(disks, { exclude: [2002] }, 'vm-1'), 'NO_SUCH_DISK', /no disk with device key 2002/);
  refused(() => selectDisks(disks, { exclude: [2000, 2001, 2016] }, 'vm-1'), 'NO_SUCH_DISK', /leaves none/);
});

test('checksum verification is off by default (SMC: "disabled by default, may slow the transfer")', () => {
  assert.equal(DEFAULT_SETTINGS.checksum, false);
});
