/** `vmlift connector receivers` as text: per receiver its free space, stored bytes and dedup ratio, or why it did not answer. */
import type { ReceiverFiguresResponse } from '../engine/receiver-figures.ts';
import { formatBytes } from './output.ts';

export function receiverLines(v: ReceiverFiguresResponse): string {
  if (v.receivers.length === 0) return 'no receiver configured';
  return v.receivers.map((r) => {
    if (!r.reachable) return `${r.address}: unreachable (${r.error.code}): ${r.error.message}${r.error.fix ? `\n  fix: ${r.error.fix}` : ''}`;
    const f = r.figures;
    const pct = f.totalBytes > 0 ? Math.round((f.freeBytes * 100) / f.totalBytes) : 0;
    return `${r.address}: ${formatBytes(f.freeBytes)} free of ${formatBytes(f.totalBytes)} (${pct} %); `
      + `${formatBytes(f.logicalBytes)} of ${f.images} images in ${formatBytes(f.distinctBytes)} of chunks, dedup ratio ${f.dedupRatio.toFixed(2)} (as of ${f.computedAt})`;
  }).join('\n');
}
