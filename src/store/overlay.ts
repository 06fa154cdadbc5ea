/**
 * Sub-chunk overlays: a partial write into a chunk stores only the sub-chunks it touches (1/16 of a
 * chunk each) instead of rewriting the whole chunk copy-on-write. Per disk, beside the index
 * `disk-<n>.idx`, the overlay `disk-<n>.sub` is a log of fixed records:
 *
 *   u32 BE slot | u16 BE sub (0..15; RESET = every sub of the slot) | 32 bytes SHA-256 (zeros = hole)
 *
 * The last record for a (slot, sub) wins; a RESET record drops the slot's earlier records (a whole
 * chunk was written). A slot's bytes are its index chunk with the overlay's sub-chunks laid over it.
 * Sub-chunks are ordinary content-addressed chunk files. A torn last record (crash mid-append) is
 * ignored. A new cycle starts from a compacted copy (one record per live (slot, sub)).
 */
import { open, type FileHandle } from 'node:fs/promises';

export const SUBS = 16;
export const RESET = 0xffff;
/** Bytes of one overlay record. */
export const RECORD = 4 + 2 + 32;

export function overlayName(disk: number): string { return `disk-${disk}.sub`; }

/** slot -> per sub: digest (all-zero digest = hole); a missing sub keeps the index chunk's bytes. */
export type Overlay = Map<number, Map<number, Buffer>>;

export function subSize(chunkSize: number): number { return chunkSize / SUBS; }

/** Apply one record to an in-memory overlay. */
export function applyRecord(ov: Overlay, slot: number, sub: number, digest: Buffer): void {
  if (sub === RESET) { ov.delete(slot); return; }
  let m = ov.get(slot);
  if (!m) ov.set(slot, (m = new Map()));
  m.set(sub, digest);
}

/** Read an overlay file (absent = empty). */
export async function readOverlay(path: string): Promise<Overlay> {
  const ov: Overlay = new Map();
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return ov;
    throw e;
  }
  try {
    const buf = Buffer.alloc(RECORD * 16384);
    for (let pos = 0; ;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      const whole = bytesRead - (bytesRead % RECORD);
      for (let k = 0; k < whole; k += RECORD) {
        applyRecord(ov, buf.readUInt32BE(k), buf.readUInt16BE(k + 4), Buffer.from(buf.subarray(k + 6, k + RECORD)));
      }
      if (bytesRead < buf.length) break;
      pos += whole;
    }
  } finally {
    await fh.close();
  }
  return ov;
}

export function encodeRecords(records: { slot: number; sub: number; digest: Buffer | null }[]): Buffer {
  const out = Buffer.alloc(records.length * RECORD);
  records.forEach((r, k) => {
    out.writeUInt32BE(r.slot, k * RECORD);
    out.writeUInt16BE(r.sub, k * RECORD + 4);
    if (r.digest) r.digest.copy(out, k * RECORD + 6, 0, 32);
  });
  return out;
}

/** One record per live (slot, sub) of `ov`, in slot order: the start of a new cycle's overlay. */
export function compacted(ov: Overlay): Buffer {
  const records: { slot: number; sub: number; digest: Buffer }[] = [];
  for (const slot of [...ov.keys()].sort((a, b) => a - b)) {
    for (const [sub, digest] of [...ov.get(slot)!].sort((a, b) => a[0] - b[0])) records.push({ slot, sub, digest });
  }
  return encodeRecords(records);
}

/** Digests an overlay references (for gc marking), as hex. */
export function* overlayDigests(ov: Overlay): Iterable<string> {
  for (const m of ov.values()) for (const d of m.values()) if (d.some((b) => b !== 0)) yield d.toString('hex');
}
