/** `job show`'s bandwidth line: the limit in force, the window that sets it, the next change, and the windows. */
import { bandwidthAt, formatBandwidthWindow, nextBandwidthChange } from '../engine/bandwidth-windows.ts';
import type { JobSettings } from '../state/types.ts';

const mbps = (n: number): string => (n === 0 ? 'unlimited' : `${n} Mbps`);

export function bandwidthLines(settings: JobSettings, liveMbps: number | undefined, now = new Date()): string[] {
  const windows = settings.bandwidthWindows ?? [];
  if (!windows.length) return [];
  const at = bandwidthAt(settings, now);
  const next = nextBandwidthChange(settings, now);
  return [
    `bandwidth now: ${mbps(at.mbps)} (${at.window ? `window ${formatBandwidthWindow(at.window)}` : 'the job\'s limit, outside its windows'})` +
      `${next ? `, ${mbps(next.mbps)} from ${next.at.toISOString()}` : ''}${liveMbps !== undefined && liveMbps !== at.mbps ? `; the running cycle is at ${mbps(liveMbps)}` : ''}`,
    `  windows: ${windows.map(formatBandwidthWindow).join('; ')}; outside them ${mbps(settings.bandwidthMbps)}`,
  ];
}
