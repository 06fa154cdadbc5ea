// Child process for gc.test.ts: writes `file` as a new cycle from empty disks (so every chunk it
// names is a dedup hit on chunks that no image references any more), commits, prints the image id.
import { readFile } from 'node:fs/promises';
import { openImageStore } from '../../src/store/index.ts';

const [root, file, extentStr] = process.argv.slice(2) as [string, string, string];
const extent = Number(extentStr);
const data = await readFile(file);
const store = await openImageStore(root);
const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'again', disks: [{ disk: 0, capacity: data.length }], baseImageId: null });
for (let o = 0; o < data.length; o += extent) {
  await w.writeExtent(0, o, Math.min(extent, data.length - o), data.subarray(o, o + extent));
  if ((o / extent) % 16 === 15) await w.flush();
  await new Promise((r) => setImmediate(r));
}
const img = await w.commit();
process.stdout.write(`${img.imageId}\n`);
