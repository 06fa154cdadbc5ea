import type { ImageInfo } from '../model/images.ts';

/** How many disks an image holds and, for a VM's image, their device keys (and the keys a disk selection left out). */
export function imageDisks(i: Pick<ImageInfo, 'disks' | 'meta'>): string {
  const keys = i.meta.diskKeys as number[] | undefined;
  const left = i.meta.excludedDiskKeys as number[] | undefined;
  return `${i.disks.length}${keys ? ` (keys ${keys.join(', ')}${left?.length ? `; not ${left.join(', ')}` : ''})` : ''}`;
}
