/**
 * How much payload a cycle's send window may hold. The window keeps what is written and not yet
 * acknowledged (for resend after a reconnect) and, ahead of it, pieces read and waiting for the
 * bandwidth limit. Unlimited, the full window keeps the link busy. Limited, anything past a few
 * seconds of the rate only waits in memory: 200 cycles at 1 Mbps each held their 64 MiB window full,
 * 8 GiB in one connector (docs/console.md, 200 live jobs). The receiver acknowledges every 300 ms,
 * so a few seconds of the rate never starve the link.
 */
const MiB = 1 << 20;
export const LIMITED_WINDOW_SECONDS = 4;
export const MIN_WINDOW_BYTES = 2 * MiB;

export function windowLimit(maxBytes: number, bandwidthMbps: number): number {
  if (!(bandwidthMbps > 0)) return maxBytes;
  const ahead = (bandwidthMbps * 1e6 / 8) * LIMITED_WINDOW_SECONDS;
  return Math.min(maxBytes, Math.max(MIN_WINDOW_BYTES, Math.ceil(ahead)));
}
