// Child process for crash.test.ts: writes a source file into a cycle, flushing every `flushEvery`
// extents and printing "flushed <bytes>" after each flush, until killed.
import { open } from 'node:fs/promises';
import { openImageStore } from '../../src/store/index.ts';

const [root, sourceFile, extentStr, flushEveryStr, slowMsStr] = process.argv.slice(2) as [string, string, string, string, string];
const extent = Number(extentStr);
const flushEvery = Number(flushEveryStr);
const slowMs = Number(slowMsStr);
const store = await openImageStore(root);
const fh = await open(sourceFile, 'r');
const capacity = (await fh.stat()).size;
const w = await store.beginCycle({ sourceId: 'crash', cycleId: 'c2', disks: [{ disk: 0, capacity }] });
let n = 0;
for (let o = 0; o < capacity; o += extent) {
  const buf = Buffer.alloc(Math.min(extent, capacity - o));
  await fh.read(buf, 0, buf.length, o);
  await w.writeExtent(0, o, buf.length, buf);
  if (++n % flushEvery === 0) {
    await w.flush();
    process.stdout.write(`flushed ${o + buf.length}\n`);
    if (slowMs) await new Promise((r) => setTimeout(r, slowMs));
  }
}
process.stdout.write('done\n');
setInterval(() => {}, 1000);
