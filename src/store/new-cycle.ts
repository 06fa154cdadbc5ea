import { copyFile, constants as fsc, mkdir, open, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../util/fsync.ts';
import { StoreError } from './types.ts';
import { indexName, SLOT, type Layout } from './layout.ts';
import { imageIds, readImageRecord, type ImageRecord } from './images.ts';
import { pinImage } from './pins.ts';
import { compacted, overlayName, readOverlay, type Overlay } from './overlay.ts';
import { writeCycleRecord, type CycleRecord } from './cycle-record.ts';
import type { DiskSpec } from '../model/images.ts';

/**
 * Create the folder `dir` of a new cycle on its base image (`baseOpt`: an image id, null for empty
 * disks, undefined for the source's newest image): the base's index files are copied (reflinked
 * where the filesystem can), its overlays compacted, and cycle.json written last. Disk n starts
 * from the base's disk `baseDisks[n]` (null: empty), by default from the base's disk n when it has one. The base image
 * is pinned while it is copied. Any earlier folder at `dir` is replaced; on failure none is left.
 */
export async function createCycle(layout: Layout, chunkSize: number, src: string, cid: string, disks: DiskSpec[],
  baseOpt: string | null | undefined, dir: string, baseDisks?: (number | null)[]): Promise<CycleRecord> {
  let base: ImageRecord | null = null;
  let unpin: (() => Promise<void>) | null = null;
  try {
    if (baseOpt === undefined) {
      const ids = await imageIds(layout, src);
      for (let k = ids.length - 1; k >= 0 && !base; k--) {
        unpin = await pinImage(layout, src, ids[k]!);
        try { base = await readImageRecord(layout, src, ids[k]!); } catch (e) {
          await unpin(); unpin = null;
          if (!(e instanceof StoreError && e.code === 'NOT_FOUND')) throw e;
        }
      }
    } else if (baseOpt !== null) {
      unpin = await pinImage(layout, src, baseOpt);
      base = await readImageRecord(layout, src, baseOpt);
    }
    if (base && base.chunkSize !== chunkSize) throw new StoreError('BAD_STORE', `image ${base.imageId} uses chunk size ${base.chunkSize}, the store ${chunkSize}`);
    const from = disks.map((d) => {
      if (!base) return null;
      const b = baseDisks ? baseDisks[d.disk] ?? null : d.disk;
      const known = b !== null && base.disks.some((x) => x.disk === b);
      if (baseDisks && b !== null && !known) {
        throw new StoreError('BAD_DISK', `disk ${d.disk} cannot start from disk ${b} of image ${base.imageId}: it has disks 0..${base.disks.length - 1}`,
          { fix: 'name a disk of the base image, or null for an empty disk' });
      }
      return known ? b : null;
    });
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'owner'), String(process.pid));
    for (const [i, d] of disks.entries()) {
      const target = join(dir, indexName(d.disk));
      const baseDisk = from[i]!;
      const fromBase = base !== null && baseDisk !== null;
      if (fromBase) {
        await copyFile(join(layout.imageDir(src, base!.imageId), indexName(baseDisk)), target, fsc.COPYFILE_FICLONE);
      }
      const fh = await open(target, fromBase ? 'r+' : 'w', 0o600);
      try {
        await fh.truncate(Math.ceil(d.capacity / chunkSize) * SLOT);
        await fh.sync();
      } finally { await fh.close(); }
      // the base's overlay, one record per live sub-chunk (slots beyond a shrunk disk dropped)
      const slots = Math.ceil(d.capacity / chunkSize);
      const ov = fromBase ? await readOverlay(join(layout.imageDir(src, base!.imageId), overlayName(baseDisk))) : new Map() as Overlay;
      for (const slot of [...ov.keys()]) if (slot >= slots) ov.delete(slot);
      await writeFileAtomic(join(dir, overlayName(d.disk)), compacted(ov));
    }
    const rec: CycleRecord = { sourceId: src, cycleId: cid, baseImageId: base?.imageId ?? null, disks, chunkSize, createdAt: new Date().toISOString() };
    if (base) rec.baseDisks = disks.map((d, i) => from[i] ?? null);
    await writeCycleRecord(dir, rec);
    await fsyncDir(layout.cyclesDir(src));
    return rec;
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  } finally {
    await unpin?.();
  }
}
