import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  bandwidthAt, followBandwidth, formatBandwidthWindow, nextBandwidthChange, parseBandwidthWindow, parseBandwidthWindows, windowCovers,
} from '../../src/engine/bandwidth-windows.ts';
import { parseSettings } from '../../src/engine/settings.ts';
import { UserError } from '../../src/util/errors.ts';

const badWindow = (re: RegExp) => (e: unknown) => e instanceof UserError && e.code === 'BAD_BANDWIDTH_WINDOW' && re.test(e.message) && /Mon-Fri 08:00-18:00/.test(e.fix ?? '');

test('a window is written as days, a time range, a time zone and a limit; it is stored with its zone and printed back', () => {
  const w = parseBandwidthWindow('Mon-Fri 08:00-18:00 Europe/Paris=50');
  assert.deepEqual(w, { days: [1, 2, 3, 4, 5], start: '08:00', end: '18:00', timeZone: 'Europe/Paris', mbps: 50 });
  assert.equal(formatBandwidthWindow(w), 'Mon-Fri 08:00-18:00 Europe/Paris=50');
  assert.deepEqual(parseBandwidthWindow('sat,sun 00:00-24:00 UTC=0').days, [0, 6]);
  assert.equal(formatBandwidthWindow(parseBandwidthWindow('Sat,Sun 00:00-24:00 UTC=0')), 'Sat,Sun 00:00-24:00 UTC=0');
  assert.deepEqual(parseBandwidthWindow('Fri-Mon 22:00-06:00 UTC=10').days, [0, 1, 5, 6], 'a day range wraps over the weekend');
  assert.equal(formatBandwidthWindow(parseBandwidthWindow('Fri-Mon 22:00-06:00 UTC=10')), 'Fri-Mon 22:00-06:00 UTC=10');
  assert.equal(parseBandwidthWindow('08:00-18:00 UTC=5').days.length, 7, 'no days: every day');
  assert.equal(parseBandwidthWindow('daily 08:00-18:00=5', 'Asia/Tokyo').timeZone, 'Asia/Tokyo', 'no zone: the connector\'s, stored');
  assert.deepEqual(parseBandwidthWindows(['Mon 01:00-02:00 UTC=1', 'Tue 01:00-02:00 UTC=2']).map((x) => x.mbps), [1, 2]);
  assert.deepEqual(parseBandwidthWindows('none'), [], '"none" clears them');
  assert.deepEqual(parseSettings({ bandwidthWindow: ['Mon-Fri 08:00-18:00 UTC=50'] }).bandwidthWindows, [{ days: [1, 2, 3, 4, 5], start: '08:00', end: '18:00', timeZone: 'UTC', mbps: 50 }]);
});

test('bad windows are refused naming what is wrong, with the form to write', () => {
  assert.throws(() => parseBandwidthWindow('Mon-Fri 08:00-18:00 UTC'), badWindow(/no "=MBPS"/));
  assert.throws(() => parseBandwidthWindow('Mon-Fri 08:00-18:00 UTC=fast'), badWindow(/whole number of Mbps/));
  assert.throws(() => parseBandwidthWindow('Mon-Fri 08:00-18:00 Mars/Olympus=5'), badWindow(/unknown time zone "Mars\/Olympus"/));
  assert.throws(() => parseBandwidthWindow('Mon-Fry 08:00-18:00 UTC=5'), badWindow(/unknown day "Fry"/));
  assert.throws(() => parseBandwidthWindow('Mon 08:00-08:00 UTC=5'), badWindow(/empty/));
  assert.throws(() => parseBandwidthWindow('Mon 25:00-26:00 UTC=5'), badWindow(/bad time/));
  assert.throws(() => parseBandwidthWindow('Mon 8-18 UTC=5'), badWindow(/no HH:MM-HH:MM/));
  assert.throws(() => parseSettings({ bandwidthWindow: 'Mon 08:00-18:00 UTC=-1' }), badWindow(/whole number/));
});

test('the limit in force: the first window covering the instant, in its own zone, past midnight too; else the job\'s', () => {
  const settings = { bandwidthMbps: 100, bandwidthWindows: parseBandwidthWindows(['Mon-Fri 08:00-18:00 Europe/Paris=50', 'Fri 22:00-06:00 UTC=0']) };
  // 2026-12-01 is a Tuesday; Paris is UTC+1 in December
  assert.deepEqual(bandwidthAt(settings, new Date('2026-12-01T06:59:00Z')).mbps, 100, '07:59 in Paris: before the window');
  assert.deepEqual(bandwidthAt(settings, new Date('2026-12-01T07:00:00Z')).mbps, 50, '08:00 in Paris: the window opens');
  assert.deepEqual(bandwidthAt(settings, new Date('2026-12-01T16:59:59Z')).mbps, 50);
  assert.deepEqual(bandwidthAt(settings, new Date('2026-12-01T17:00:00Z')).mbps, 100, '18:00 in Paris: the window is closed');
  assert.deepEqual(bandwidthAt(settings, new Date('2026-12-05T02:00:00Z')).mbps, 0, 'Saturday 02:00 UTC: in Friday\'s overnight window');
  assert.deepEqual(bandwidthAt(settings, new Date('2026-12-05T06:00:00Z')).mbps, 100, 'it ends at 06:00');
  assert.deepEqual(bandwidthAt(settings, new Date('2026-12-05T09:00:00Z')).mbps, 100, 'no weekday window on Saturday');
  // Summer time: 08:00 in Paris is 06:00 UTC in July
  assert.equal(windowCovers(settings.bandwidthWindows[0]!, new Date('2026-07-01T06:00:00Z')), true);
  assert.equal(windowCovers(settings.bandwidthWindows[0]!, new Date('2026-07-01T05:59:00Z')), false);
  const next = nextBandwidthChange(settings, new Date('2026-12-01T10:30:00Z'));
  assert.deepEqual([next?.at.toISOString(), next?.mbps], ['2026-12-01T17:00:00.000Z', 100]);
  assert.equal(nextBandwidthChange({ bandwidthMbps: 5 }, new Date()), null);
});

test('a follower applies the limit at once, moves it when the clock crosses an edge, and again on refresh', async () => {
  let clock = new Date('2026-12-01T07:59:59.500Z');
  const settings = { bandwidthMbps: 100, bandwidthWindows: parseBandwidthWindows(['Mon-Fri 08:00-18:00 UTC=50']) };
  const applied: number[] = [];
  const changes: string[] = [];
  const f = followBandwidth({ settings: () => settings, clock: () => clock, intervalMs: 20, apply: (m) => applied.push(m), onChange: (c) => changes.push(`${c.from}->${c.to}`) });
  assert.deepEqual(applied, [100]);
  clock = new Date('2026-12-01T08:00:00.000Z');
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(applied, [100, 50], 'the window opened');
  assert.deepEqual(changes, ['100->50']);
  settings.bandwidthWindows = [];
  f.refresh();
  assert.deepEqual(applied, [100, 50, 100], 'the windows removed: back to the job\'s limit at once');
  f.stop();
  clock = new Date('2026-12-01T08:00:00.000Z');
  settings.bandwidthWindows = parseBandwidthWindows(['daily 00:00-24:00 UTC=1']);
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(applied.length, 3, 'a stopped follower changes nothing');
});
