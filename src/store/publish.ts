import { link, mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fsyncDir, writeFileAtomic } from '../util/fsync.ts';
import { indexName, SLOT, type Layout } from './layout.ts';
import { isZeroSlot } from './chunks.ts';
import { imageIds, publicInfo, readImageRecord, type ImageRecord } from './images.ts';
import { overlayName } from './overlay.ts';
import type { CycleRecord } from './cycle-record.ts';
import type { DiskJournals } from './journals.ts';
import type { ImageInfo } from '../model/images.ts';

/**
 * Publish a flushed cycle (folder `dir`) as its source's next image, atomically: the cycle's index
 * and overlay files are hard-linked into a temp folder beside the images, image.json is written and
 * synced, and the folder is renamed to the next sequence number (the next free one when another
 * writer took it). An image folder is thus complete or absent; on failure the temp folder goes.
 * When this cycle was already published (a crash before its folder was removed), that image is
 * returned instead. The cycle folder is the caller's to remove.
 */
export async function publishImage(layout: Layout, rec: CycleRecord, dir: string, disks: readonly DiskJournals[],
  meta: Record<string, unknown>): Promise<ImageInfo> {
  const src = rec.sourceId;
  const imagesDir = layout.imagesDir(src);
  const done = await alreadyPublished(layout, rec);
  if (done) return publicInfo(done);
  const stats = [];
  for (const ds of disks) stats.push({ ...ds.spec, ...(await indexStats(ds, rec.chunkSize)) });
  const tmp = join(imagesDir, `.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(tmp);
  try {
    for (const ds of disks) {
      await link(join(dir, indexName(ds.spec.disk)), join(tmp, indexName(ds.spec.disk)));
      await link(join(dir, overlayName(ds.spec.disk)), join(tmp, overlayName(ds.spec.disk)));
    }
    const lastSeqPath = join(layout.sourceDir(src), 'last-seq');
    const lastSeq = Number((await readFile(lastSeqPath, 'utf8').catch(() => '0')).trim()) || 0;
    const ids = await imageIds(layout, src);
    let seq = Math.max(lastSeq, ids.length ? Number(ids[ids.length - 1]) : 0) + 1;
    for (;;) {
      const img: ImageRecord = {
        sourceId: src, imageId: String(seq), seq, committedAt: new Date().toISOString(),
        cycleId: rec.cycleId, baseImageId: rec.baseImageId, disks: stats, meta, chunkSize: rec.chunkSize,
      };
      const fh = await open(join(tmp, 'image.json'), 'w', 0o600);
      try { await fh.writeFile(JSON.stringify(img, null, 1)); await fh.sync(); } finally { await fh.close(); }
      await fsyncDir(tmp);
      try {
        await rename(tmp, join(imagesDir, String(seq)));
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOTEMPTY' || code === 'EEXIST') { seq++; continue; }
        throw e;
      }
      await fsyncDir(imagesDir);
      await writeFileAtomic(lastSeqPath, String(seq));
      return publicInfo(img);
    }
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** The image this cycle already became: a crash between publishing it and removing the cycle folder. */
export async function alreadyPublished(layout: Layout, rec: CycleRecord): Promise<ImageRecord | null> {
  for (const id of (await imageIds(layout, rec.sourceId)).reverse()) {
    const r = await readImageRecord(layout, rec.sourceId, id).catch(() => null);
    if (r && r.cycleId === rec.cycleId && r.committedAt >= rec.createdAt) return r;
    if (r && r.committedAt < rec.createdAt) break;
  }
  return null;
}

/** Non-hole chunks and their bytes, streaming the index (bounded memory). */
async function indexStats(ds: DiskJournals, cs: number): Promise<{ allocatedBytes: number; chunkCount: number }> {
  const per = 32768;
  const buf = Buffer.alloc(per * SLOT);
  const slots = ds.index.slots;
  const overlay = ds.overlay.overlay;
  let chunkCount = 0; let allocatedBytes = 0;
  for (let i = 0; i < slots; i += per) {
    const got = await ds.index.readSlots(i, Math.min(per, slots - i), buf);
    for (let k = 0; k * SLOT < got.length; k++) {
      const subs = overlay.get(i + k);
      if (!isZeroSlot(got.subarray(k * SLOT, (k + 1) * SLOT)) || (subs && [...subs.values()].some((d) => !isZeroSlot(d)))) {
        chunkCount++;
        allocatedBytes += Math.min(cs, ds.spec.capacity - (i + k) * cs);
      }
    }
  }
  return { allocatedBytes, chunkCount };
}
