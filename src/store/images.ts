import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { StoreError } from './types.ts';
import type { ImageInfo } from '../model/images.ts';
import { assertImageId, type Layout } from './layout.ts';

/** What image.json holds: the public ImageInfo plus the chunk size its indexes use. */
export interface ImageRecord extends ImageInfo {
  chunkSize: number;
}

export function publicInfo(r: ImageRecord): ImageInfo {
  const { chunkSize: _c, ...info } = r;
  return info;
}

export async function readImageRecord(layout: Layout, src: string, imageId: string): Promise<ImageRecord> {
  assertImageId(imageId);
  try {
    return JSON.parse(await readFile(join(layout.imageDir(src, imageId), 'image.json'), 'utf8')) as ImageRecord;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new StoreError('NOT_FOUND', `image ${imageId} of source ${src} does not exist`, { fix: 'list the images with `vmlift image ls`' });
    }
    throw e;
  }
}

/** Committed image ids of a source, oldest first. */
export async function imageIds(layout: Layout, src: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(layout.imagesDir(src));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  return names.filter((n) => /^[1-9][0-9]*$/.test(n)).sort((a, b) => Number(a) - Number(b));
}

export async function listImageRecords(layout: Layout, src: string): Promise<ImageRecord[]> {
  const out: ImageRecord[] = [];
  for (const id of await imageIds(layout, src)) {
    try {
      out.push(await readImageRecord(layout, src, id));
    } catch (e) {
      if (!(e instanceof StoreError && e.code === 'NOT_FOUND')) throw e; // removed meanwhile
    }
  }
  return out;
}
