/**
 * The bytes an agent cycle will send, known before reading: on a cycle without a base image, every
 * allocated byte (SEEK_DATA/SEEK_HOLE; a source without extents counts in full). A cycle on a base
 * sends only changed blocks, unknown until the scan: no estimate (undefined).
 */
import type { BlockSource } from '../source/types.ts';

export async function fullCycleEstimate(sources: readonly BlockSource[]): Promise<number> {
  let n = 0;
  for (const s of sources) {
    if (!s.extents) { n += s.capacity; continue; }
    for await (const e of s.extents()) if (e.data) n += e.length;
  }
  return n;
}
