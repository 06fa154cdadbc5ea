import { join } from 'node:path';
import { assertId } from '../util/ids.ts';
import { UserError } from '../util/errors.ts';
import { PackIndex } from './packs.ts';

/**
 * On-disk layout of a store (all paths below `root`):
 *   store.json                          { version, chunkSize }   (version 2: pack files)
 *   gc.pending                          a sweep left unreferenced chunks within its grace: the next one is owed
 *   packs/<id>.pack, packs/<id>.idx     chunks and sub-chunks in pack files, and each pack's index (packs.ts)
 *   sources/<src>/images/<seq>/         image.json + disk-<n>.idx + disk-<n>.sub (a committed image; `.tmp-*`/`.trash-*` in flux)
 *   sources/<src>/cycles/<cycle>/       cycle.json, disk-<n>.idx + .sub (working), held.log, refs.log, owner
 *   sources/<src>/pins/<image>.<pid>.<rand>   an export/verify (or a beginning cycle) is using the image
 * An index is 32 bytes per chunk (its SHA-256); 32 zero bytes mark a hole. The .sub overlay lays
 * sub-chunks over some slots (overlay.ts).
 */
export const SLOT = 32;
/** 1: one file per chunk under chunks/<hh>/ (migrate.ts converts it); 2: pack files. */
export const STORE_VERSION = 2;

export class Layout {
  private index: PackIndex | null = null;
  constructor(readonly root: string) {}
  /** The store's chunk -> pack map, shared by everything that uses this Layout. */
  get packIndex(): PackIndex { return (this.index ??= new PackIndex(this)); }
  get packsDir(): string { return join(this.root, 'packs'); }
  packPath(id: string): string { return join(this.root, 'packs', `${id}.pack`); }
  packIndexPath(id: string): string { return join(this.root, 'packs', `${id}.idx`); }
  get storeJson(): string { return join(this.root, 'store.json'); }
  /** Chunk files of a version 1 store (read by `vmlift image migrate` only). */
  get chunksDir(): string { return join(this.root, 'chunks'); }
  get gcPending(): string { return join(this.root, 'gc.pending'); }
  get sourcesDir(): string { return join(this.root, 'sources'); }
  chunkPathV1(hex: string): string { return join(this.root, 'chunks', hex.slice(0, 2), hex); }
  sourceDir(src: string): string { return join(this.root, 'sources', assertId(src, 'source id')); }
  imagesDir(src: string): string { return join(this.sourceDir(src), 'images'); }
  imageDir(src: string, imageId: string): string { return join(this.imagesDir(src), assertImageId(imageId)); }
  cyclesDir(src: string): string { return join(this.sourceDir(src), 'cycles'); }
  cycleDir(src: string, cycleId: string): string { return join(this.cyclesDir(src), assertId(cycleId, 'cycle id')); }
  pinsDir(src: string): string { return join(this.sourceDir(src), 'pins'); }
}

export function indexName(disk: number): string { return `disk-${disk}.idx`; }

/** Image ids are decimal sequence numbers. */
export function assertImageId(id: unknown): string {
  if (typeof id !== 'string' || !/^[1-9][0-9]{0,15}$/.test(id)) {
    throw new UserError('BAD_ID', `invalid image id ${JSON.stringify(id)}: image ids are decimal numbers (1, 2, ...)`,
      'use an image id listed by `vmlift image ls`');
  }
  return id;
}
