/**
 * Reading the bytes of one disk of an image, committed (its image folder) or staged (a flushed
 * cycle's working index and overlay, before it is published): the index slots name chunk files
 * (zeros = hole), the overlay's sub-chunks lie over them.
 */
import { SLOT, type Layout } from './layout.ts';
import { fitLength, isZeroSlot } from './chunks.ts';
import { subSize, type Overlay } from './overlay.ts';

/** One disk as a reader sees it. */
export interface DiskSlots {
  capacity: number;
  /** `count` index slots (32 bytes each) from slot `first`; slots past the file's end read as holes. */
  slots(first: number, count: number): Promise<Buffer>;
  overlay: Overlay;
}

export async function runLimited<T>(items: T[], depth: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(depth, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

/** A chunk's bytes through the pack index (StoreError CHUNK_MISSING when no pack holds it). */
async function readChunk(layout: Layout, hex: string, len: number): Promise<Buffer> {
  return fitLength(await layout.packIndex.read(hex), len);
}

/**
 * The bytes of one slot (`len` bytes): its chunk (`slot`, zeros = hole) with the overlay's
 * sub-chunks `subs` laid over it; null when it is a hole with no overlay.
 */
export async function slotBytes(layout: Layout, chunkSize: number, slot: Buffer, len: number, subs: Map<number, Buffer> | undefined): Promise<Buffer | null> {
  const base = isZeroSlot(slot) ? null : await readChunk(layout, slot.toString('hex'), len);
  if (!subs) return base;
  const out = base ?? Buffer.alloc(len);
  const ss = subSize(chunkSize);
  for (const [k, d] of subs) {
    const s = k * ss;
    if (s >= len) continue;
    const e = Math.min(s + ss, len);
    if (isZeroSlot(d)) out.fill(0, s, e);
    else (await readChunk(layout, d.toString('hex'), e - s)).copy(out, s);
  }
  return out;
}

/** `length` bytes at `offset` of a disk (the caller checked the range); holes read as zeros. */
export async function readDiskBytes(layout: Layout, chunkSize: number, d: DiskSlots, offset: number, length: number): Promise<Buffer> {
  const out = Buffer.alloc(length);
  if (length === 0) return out;
  const cs = chunkSize;
  const first = Math.floor(offset / cs);
  const last = Math.floor((offset + length - 1) / cs);
  const slots = await d.slots(first, last - first + 1);
  const idx = Array.from({ length: last - first + 1 }, (_, k) => first + k);
  await runLimited(idx, 4, async (i) => {
    const slot = slots.subarray((i - first) * SLOT, (i - first + 1) * SLOT);
    const cStart = i * cs;
    const data = await slotBytes(layout, cs, slot, Math.min(cs, d.capacity - cStart), d.overlay.get(i));
    if (!data) return;
    const s = Math.max(offset, cStart);
    const e = Math.min(offset + length, cStart + cs);
    data.copy(out, s - offset, s - cStart, e - cStart);
  });
  return out;
}
