import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImageStore } from '../../src/store/index.ts';
import { publishImage } from '../../src/store/publish.ts';
import { bareCycle, bareStore } from './cycle-parts.ts';
import { sha } from './helpers.ts';

const CS = 64 << 10;

test('an image appears complete or not at all: a reader polling the images folder never sees part of one', async (t) => {
  const { root, layout } = await bareStore(t, CS);
  const n = 40;
  const disks = Array.from({ length: n }, (_, disk) => ({ disk, capacity: CS }));
  const c = await bareCycle(t, { layout, chunkSize: CS, disks });
  const data = disks.map(() => randomBytes(CS));
  await Promise.all(disks.map((d) => c.write(d.disk, 0, data[d.disk]!)));
  await c.flush();
  const imagesDir = layout.imagesDir('vm');
  let done = false;
  let polls = 0;
  const partial: string[] = [];
  const poller = (async () => {
    while (!done) {
      polls++;
      for (const name of await readdir(imagesDir)) {
        if (!/^[0-9]+$/.test(name)) continue;
        const files = new Set(await readdir(join(imagesDir, name)).catch(() => []));
        const missing = ['image.json', ...disks.flatMap((d) => [`disk-${d.disk}.idx`, `disk-${d.disk}.sub`])].filter((f) => !files.has(f));
        if (missing.length) partial.push(`${name} lacks ${missing.join(', ')}`);
        else JSON.parse(await readFile(join(imagesDir, name, 'image.json'), 'utf8'));
      }
      await new Promise((r) => setImmediate(r));
    }
  })();
  const img = await publishImage(layout, c.rec, c.dir, [...c.journals.disks.values()], { note: 'x' });
  done = true;
  await poller;
  assert.deepEqual(partial, []);
  assert.ok(polls >= 3, `the reader polled ${polls} times during the publish`);
  assert.equal(img.imageId, '1');
  assert.deepEqual(img.meta, { note: 'x' });
  const store = await openImageStore(root);
  for (const d of disks) assert.equal(sha(await store.readImage('vm', '1', d.disk, 0, CS)), sha(data[d.disk]!));
});

test('a publish that fails part way leaves no image, no temp folder and no sequence number behind', async (t) => {
  const { layout } = await bareStore(t, CS);
  const c = await bareCycle(t, { layout, chunkSize: CS, disks: [{ disk: 0, capacity: 4 * CS }, { disk: 1, capacity: CS }] });
  await c.write(0, 0, randomBytes(CS));
  await c.write(0, CS, null, CS); // a hole
  await c.write(0, 2 * CS + 4096, randomBytes(4096)); // only an overlay sub-chunk
  await c.write(1, 0, randomBytes(CS));
  await c.flush();
  const sub1 = join(c.dir, 'disk-1.sub');
  const kept = await readFile(sub1);
  await rm(sub1);
  await assert.rejects(publishImage(layout, c.rec, c.dir, [...c.journals.disks.values()], {}), /ENOENT/);
  assert.deepEqual(await readdir(layout.imagesDir('vm')), []);
  assert.equal(await stat(join(layout.sourceDir('vm'), 'last-seq')).catch(() => null), null);
  await writeFile(sub1, kept);
  const img = await publishImage(layout, c.rec, c.dir, [...c.journals.disks.values()], {});
  assert.equal(img.imageId, '1');
  assert.deepEqual(img.disks.map((d) => [d.disk, d.chunkCount, d.allocatedBytes]), [[0, 2, 2 * CS], [1, 1, CS]]);
});

test('image numbers are never reused, and a cycle published twice (crash before its folder was removed) is one image', async (t) => {
  const { layout } = await bareStore(t, CS);
  const disks = [{ disk: 0, capacity: CS }];
  const c1 = await bareCycle(t, { layout, chunkSize: CS, disks, cycleId: 'c1' });
  await c1.write(0, 0, randomBytes(CS));
  await c1.flush();
  assert.equal((await publishImage(layout, c1.rec, c1.dir, [c1.disk()], {})).imageId, '1');
  await rm(layout.imageDir('vm', '1'), { recursive: true });
  const c2 = await bareCycle(t, { layout, chunkSize: CS, disks, cycleId: 'c2' });
  await c2.write(0, 0, randomBytes(CS));
  await c2.flush();
  const img2 = await publishImage(layout, c2.rec, c2.dir, [c2.disk()], {});
  assert.equal(img2.imageId, '2');
  const again = await publishImage(layout, c2.rec, c2.dir, [c2.disk()], {});
  assert.deepEqual(again, img2);
  assert.deepEqual(await readdir(layout.imagesDir('vm')), ['2']);
});
