/**
 * The receiver's check of a cycle against the sender's source digests (CommitCycleRequest), run on
 * the staged image before the store publishes it: the whole-disk SHA-256 and the digest tree's root
 * (transfer/digest-tree.ts), each recomputed in one pass over the staged bytes.
 */
import { createHash } from 'node:crypto';
import type { StagedImage } from '../store/types.ts';
import { treeRootOf } from '../transfer/digest-tree.ts';
import type { SourceDigest } from '../model/images.ts';

const READ_BATCH = 4 * 1024 * 1024;

/** Null when every digest matches the staged image, else what differs. */
export async function sourceDigestMismatch(staged: StagedImage, digests: readonly SourceDigest[]): Promise<string | null> {
  for (const d of digests) {
    const spec = staged.disks.find((x) => x.disk === d.disk);
    if (!spec) return `disk ${d.disk} is not in the cycle`;
    if (d.sha256 !== undefined) {
      const h = createHash('sha256');
      for (let pos = 0; pos < spec.capacity; pos += READ_BATCH) h.update(await staged.read(d.disk, pos, Math.min(READ_BATCH, spec.capacity - pos)));
      const got = h.digest('hex');
      if (got !== d.sha256.toLowerCase()) return `disk ${d.disk}: SHA-256 ${got}, source says ${d.sha256}`;
    }
    if (d.tree !== undefined) {
      const ranges = d.tree.ranges ?? [];
      const last = ranges[ranges.length - 1];
      if (last && last.offset + last.length > spec.capacity) return `disk ${d.disk}: the digest tree covers bytes up to ${last.offset + last.length}, past the disk's ${spec.capacity}`;
      const got = await treeRootOf(ranges, (offset, length) => staged.read(d.disk, offset, length));
      if (got !== d.tree.root) {
        return `disk ${d.disk}: the digest tree over the ${ranges.length} ranges read has root ${got}, source says ${d.tree.root}`;
      }
    }
  }
  return null;
}
