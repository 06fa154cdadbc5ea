/**
 * The bytes an agent cycle will send, known before reading: on a cycle without a base image, every
 * allocated byte (SEEK_DATA/SEEK_HOLE). A source that reports no hole (a block device, a file system
 * without SEEK_DATA, a fully allocated file) gives no estimate: its all-zero blocks, which are not
 * stored, are known only after the scan, and a refusal on its capacity could be wrong. A cycle on a
 * base sends only changed blocks, also unknown until the scan. No estimate: undefined.
 */
import type { BlockSource } from '../source/types.ts';

export async function fullCycleEstimate(sources: readonly BlockSource[]): Promise<number | undefined> {
  let n = 0;
  for (const s of sources) {
    if (!s.extents) return undefined;
    let allocated = 0;
    let holes = false;
    for await (const e of s.extents()) {
      if (e.data) allocated += e.length;
      else holes = true;
    }
    if (!holes) return undefined;
    n += allocated;
  }
  return n;
}
