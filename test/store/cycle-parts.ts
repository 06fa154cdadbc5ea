// A cycle assembled from its parts (no StoreCycleWriter): for the unit tests of the pieces of src/store/cycle-writer.ts.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { openImageStore } from '../../src/store/index.ts';
import { Layout } from '../../src/store/layout.ts';
import { ChunkWriter } from '../../src/store/chunks.ts';
import { createCycle } from '../../src/store/new-cycle.ts';
import { CycleJournals } from '../../src/store/journals.ts';
import { ExtentWriter } from '../../src/store/extent-writer.ts';
import { tempDir } from './helpers.ts';
import type { DiskSpec } from '../../src/model/images.ts';

type T = Parameters<typeof tempDir>[0];

/** A new store under a temp folder (chunk folders and all). */
export async function bareStore(t: T, chunkSize: number): Promise<{ root: string; layout: Layout }> {
  const root = join(await tempDir(t, 'parts'), 'store');
  await openImageStore(root, { chunkSize });
  return { root, layout: new Layout(root) };
}

/** A new cycle `cycleId` of source "vm" on empty disks: its folder, journals, chunk writer and extent writer. */
export async function bareCycle(t: T, o: { layout: Layout; chunkSize: number; disks: DiskSpec[]; cycleId?: string; cacheBytes?: number }) {
  const dir = o.layout.cycleDir('vm', o.cycleId ?? 'c');
  await mkdir(o.layout.imagesDir('vm'), { recursive: true }); // as StoreCycleWriter.begin does
  const rec = await createCycle(o.layout, o.chunkSize, 'vm', o.cycleId ?? 'c', o.disks, null, dir);
  const journals = await CycleJournals.open(dir, rec);
  t.after(() => journals.close());
  const chunks = new ChunkWriter(o.layout, journals.refs);
  const extents = new ExtentWriter(o.chunkSize, chunks, journals.disks, o.cacheBytes);
  const disk = (n = 0) => journals.disks.get(n)!;
  const write = (n: number, offset: number, data: Buffer | null, length = data!.length) => extents.write(disk(n), offset, length, data, undefined);
  /** What StoreCycleWriter.flush does. */
  const flush = async () => {
    await extents.settled();
    await journals.flush(chunks, () => extents.storeCached());
  };
  return { dir, rec, journals, chunks, extents, disk, write, flush };
}
