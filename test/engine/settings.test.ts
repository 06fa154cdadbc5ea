import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseSettings, resolveSettings, DEFAULT_SETTINGS } from '../../src/engine/settings.ts';
import { parseDuration } from '../../src/util/duration.ts';
import { UserError } from '../../src/util/errors.ts';

test('durations parse in the forms users write', () => {
  assert.equal(parseDuration('1h'), 3600);
  assert.equal(parseDuration('1h30m'), 5400);
  assert.equal(parseDuration('7d'), 604800);
  assert.equal(parseDuration('3600'), 3600);
  assert.throws(() => parseDuration('1 hour'), /invalid duration/);
  assert.throws(() => parseDuration('h'), /invalid duration/);
});

test('settings inside the ranges of docs/design.md are accepted', () => {
  assert.deepEqual(parseSettings({ interval: '1h', maxImages: '10', compression: 0, bandwidth: '100', checksum: 'off', transport: 'nbd' }),
    { intervalSeconds: 3600, maxImages: 10, compression: 0, bandwidthMbps: 100, checksum: false, transport: 'nbd' });
  assert.equal(parseSettings({ interval: '7d' }).intervalSeconds, 604800);
});

test('each out-of-range setting is refused with its range and the fix', () => {
  const cases: [object, RegExp][] = [
    [{ interval: '59m' }, /from 1h to 7d/],
    [{ interval: '8d' }, /from 1h to 7d/],
    [{ maxImages: 0 }, /max kept images must be a whole number from 1 to 10/],
    [{ maxImages: '11' }, /from 1 to 10/],
    [{ compression: 11 }, /compression level must be a whole number from 0 to 10/],
    [{ compression: '2.5' }, /compression level/],
    [{ bandwidth: -1 }, /bandwidth limit/],
    [{ checksum: 'maybe' }, /checksum must be on or off/],
    [{ transport: 'ftp' }, /unknown disk transport "ftp"/],
  ];
  for (const [input, re] of cases) {
    assert.throws(() => parseSettings(input), (e: unknown) => e instanceof UserError && re.test(e.message) && !!e.fix, JSON.stringify(input));
  }
});

test('template then overrides win over defaults', () => {
  const s = resolveSettings({ compression: 3, intervalSeconds: 7200 }, { compression: 9 });
  assert.equal(s.compression, 9);
  assert.equal(s.intervalSeconds, 7200);
  assert.equal(s.maxImages, DEFAULT_SETTINGS.maxImages);
});
