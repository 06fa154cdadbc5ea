/**
 * What the kill -9 matrix checks after every trial, on the receiver's data folder: each committed
 * image of the source verifies and exports (raw) with the SHA-256 its snapshot or source had; after
 * a gc no temp file, no half-removed image and no open cycle is left.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { openImageStore } from '../../src/store/index.ts';
import { cli } from './procs.ts';

export interface StoreCheck { images: number; corrupt: string[]; leftovers: string[] }

export async function fileSha(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const b of createReadStream(path)) h.update(b as Buffer);
  return h.digest('hex');
}

/**
 * Names under `dir` (recursively) that are in flux: temp files, images being removed, packs set aside
 * by a gc, pack indexes being written, packs never sealed (no .idx beside them).
 */
async function inFlux(dir: string, out: string[], rel = ''): Promise<void> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  const names = new Set(entries.map((e) => e.name));
  for (const e of entries) {
    const p = rel ? `${rel}/${e.name}` : e.name;
    const unsealed = e.name.endsWith('.pack') && !e.name.startsWith('.') && !names.has(e.name.replace(/\.pack$/, '.idx'));
    if (/^\.(tmp|trash|gc)-/.test(e.name) || e.name.includes('.partial-') || e.name.endsWith('.idx.tmp') || unsealed) out.push(p);
    if (e.isDirectory()) await inFlux(join(dir, e.name), out, p);
  }
}

/**
 * `expected`: imageId → the SHA-256 of each disk. `useCli`: verify and export with `vmlift image
 * verify|export` (the full matrix), else through the store API (the short test: fewer processes).
 */
export async function checkStore(o: { dataDir: string; sourceId: string; expected: Map<string, string[]>; exportDir: string; useCli: boolean; maxImages: number }): Promise<StoreCheck> {
  const store = await openImageStore(join(o.dataDir, 'store'));
  const corrupt: string[] = [];
  const leftovers: string[] = [];
  let images = 0;
  try {
    for (const img of await store.listImages(o.sourceId)) {
      images++;
      const want = o.expected.get(img.imageId);
      if (!want) { corrupt.push(`image ${img.imageId}: no cycle of this trial made it`); continue; }
      if (o.useCli) {
        const r = await cli(['image', 'verify', '--data-dir', o.dataDir, '--source', o.sourceId, '--image', img.imageId, '--json']);
        const v = r.code === 0 || r.code === 3 ? JSON.parse(r.stdout) as { ok: boolean; bad: unknown[] } : null;
        if (!v?.ok) corrupt.push(`image ${img.imageId}: verify ${v ? `found ${v.bad.length} bad chunks` : `failed: ${r.stderr.trim()}`}`);
      } else {
        const v = await store.verify(o.sourceId, img.imageId);
        if (!v.ok) corrupt.push(`image ${img.imageId}: verify found ${v.bad.length} bad chunks`);
      }
      for (const d of img.disks) {
        const out = join(o.exportDir, `${o.sourceId}-${img.imageId}-${d.disk}.raw`);
        if (o.useCli) {
          const r = await cli(['image', 'export', '--data-dir', o.dataDir, '--source', o.sourceId, '--image', img.imageId, '--disk', String(d.disk), '--output', out]);
          if (r.code !== 0) { corrupt.push(`image ${img.imageId} disk ${d.disk}: export failed: ${r.stderr.trim()}`); continue; }
        } else {
          await store.export(o.sourceId, img.imageId, d.disk, 'raw', out);
        }
        const got = await fileSha(out);
        await rm(out, { force: true });
        if (got !== want[d.disk]) corrupt.push(`image ${img.imageId} disk ${d.disk}: SHA-256 ${got.slice(0, 12)}… is not the source's ${want[d.disk]?.slice(0, 12)}…`);
      }
    }
    if (images > o.maxImages) leftovers.push(`${images} images kept, more than the source's max-images ${o.maxImages}`);
    await store.gc();
    for (const c of await store.openCycles(o.sourceId)) leftovers.push(`open cycle ${c}`);
    const flux: string[] = [];
    await inFlux(store.root, flux);
    await inFlux(o.exportDir, flux);
    leftovers.push(...flux);
  } finally {
    await store.close();
  }
  return { images, corrupt, leftovers };
}
