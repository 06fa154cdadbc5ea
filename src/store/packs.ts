/**
 * Pack files: many chunks (and sub-chunks) in one file, found through an index from chunk name to
 * (pack, offset, length), as restic, kopia and Proxmox Backup Server store theirs. One file and one
 * fsync per pack instead of one file (an inode, a rename, a folder entry) per chunk.
 *
 *   packs/<id>.pack   "VMLPACK1", then entries: u32 BE length | 32-byte chunk name | data
 *   packs/<id>.idx    "VMLPIDX1" | u32 BE count | count x (32-byte name | u64 BE data offset | u32 BE length)
 *                     | SHA-256 of all the bytes before it
 *   packs/<id>.idx.tmp   an index being written (not yet renamed)
 *   packs/.gc-<pid>-<id>.pack   a pack gc set aside to delete (put back when that gc died)
 *
 * `<id>` = `<pid>-<time base36>-<random hex>` of the process that wrote it. A pack is *sealed* once
 * its .idx exists: the pack was fsynced before the index was written, and the index is written under
 * a temp name, fsynced and renamed, so a sealed pack is complete and durable (the caller fsyncs the
 * folder before anything names its chunks). A .pack without .idx is being written by a live process,
 * or left by a dead one (garbage: nothing durable names its chunks).
 *
 * A chunk may be in more than one pack (two writers stored the same new content at once, or a repack
 * crashed before the old pack went): any copy serves; gc keeps one. Chunk names are computed by the
 * writer (chunks.ts) and are only keys here.
 */
import { constants as fsc } from 'node:fs';
import { open, readdir, readFile, rename, unlink, type FileHandle } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { Layout } from './layout.ts';
import { StoreError } from './types.ts';
import { dropFromCache } from './native.ts';
import { PackReaders, readFullyAt } from './pack-readers.ts';
import { writeFully } from '../util/write-fully.ts';
import { nativeDigest } from '../util/native-digest.ts';
import { digestRefused } from './claims.ts';
import { crashPoint } from '../util/crash.ts';

export const PACK_MAGIC = Buffer.from('VMLPACK1');
export const IDX_MAGIC = Buffer.from('VMLPIDX1');
/** Bytes before each entry's data in a pack: u32 length + 32-byte name. */
export const ENTRY_HEADER = 36;
const IDX_RECORD = 44;

export interface PackEntry { hex: string; offset: number; length: number }
export interface ChunkLocation { pack: string; offset: number; length: number }

let packCounter = 0;
export function newPackId(): string {
  return `${process.pid}-${Date.now().toString(36)}${(packCounter++).toString(36)}-${randomBytes(4).toString('hex')}`;
}
/** The pid of the process that wrote pack `id`. */
export function packWriterPid(id: string): number { return Number(id.split('-')[0]); }
export const PACK_ID = /^[0-9]+-[0-9a-z]+-[0-9a-f]{8}$/;

export function encodeIndex(entries: readonly PackEntry[]): Buffer {
  const body = Buffer.alloc(IDX_MAGIC.length + 4 + entries.length * IDX_RECORD);
  IDX_MAGIC.copy(body, 0);
  body.writeUInt32BE(entries.length, 8);
  entries.forEach((e, k) => {
    const at = 12 + k * IDX_RECORD;
    body.write(e.hex, at, 32, 'hex');
    body.writeBigUInt64BE(BigInt(e.offset), at + 32);
    body.writeUInt32BE(e.length, at + 40);
  });
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

/** The entries of a pack index, or null when the file is damaged (bad magic, size or checksum). */
export function decodeIndex(buf: Buffer): PackEntry[] | null {
  if (buf.length < 12 + 32 || !buf.subarray(0, 8).equals(IDX_MAGIC)) return null;
  const count = buf.readUInt32BE(8);
  if (buf.length !== 12 + count * IDX_RECORD + 32) return null;
  const body = buf.subarray(0, buf.length - 32);
  if (!createHash('sha256').update(body).digest().equals(buf.subarray(buf.length - 32))) return null;
  const out: PackEntry[] = [];
  for (let k = 0; k < count; k++) {
    const at = 12 + k * IDX_RECORD;
    out.push({ hex: buf.toString('hex', at, at + 32), offset: Number(buf.readBigUInt64BE(at + 32)), length: buf.readUInt32BE(at + 40) });
  }
  return out;
}

/** Read exactly `length` bytes at `offset` of the pack at `path` (PACK_TRUNCATED past its end). */
export async function readAt(path: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    return await readFullyAt(fh, offset, length, into, path);
  } finally {
    await fh.close();
  }
}

/** `b` (the first bytes of a range) followed by zeros up to `len` bytes: in `into` when `b` was read into it. */
export function padded(b: Buffer, len: number, into?: Buffer): Buffer {
  if (!into) return Buffer.concat([b, Buffer.alloc(len - b.length)]);
  into.fill(0, b.length, len);
  return into.subarray(0, len);
}

const missing = (hex: string) => new StoreError('CHUNK_MISSING', `chunk ${hex} is missing from the store`,
  { fix: 'run `vmlift image verify` on the image; restore the store from a backup or sync a new image' });

/**
 * The chunk -> (pack, offset, length) map of one store, in memory: every sealed pack's index, read
 * when first needed and again (new packs only) when a lookup misses. Packs sealed by this process
 * are added as they are sealed; packs of other processes appear at the next refresh.
 */
export class PackIndex {
  private readonly packs = new Map<string, PackEntry[]>();
  private readonly map = new Map<string, ChunkLocation>();
  /** Packs whose index is damaged (reported by verify; their chunks read as missing). */
  readonly damaged = new Set<string>();
  private scanning: Promise<void> | null = null;
  private lastScan = 0;
  private readonly readers = new PackReaders();

  constructor(private readonly layout: Layout) {}

  /** Read the index of every sealed pack once (a no-op after the first scan). */
  async ensureLoaded(): Promise<void> {
    if (this.lastScan === 0) await this.refresh();
  }

  /** Rescan the packs folder when the last scan is older than `maxAgeMs` (writers: cross-process dedup). */
  async refreshIfOlder(maxAgeMs: number): Promise<void> {
    if (Date.now() - this.lastScan > maxAgeMs) await this.refresh();
  }

  /** Load the packs sealed since the last scan; forget those gone. */
  refresh(): Promise<void> {
    if (!this.scanning) {
      this.scanning = this.scan().finally(() => { this.scanning = null; });
    }
    return this.scanning;
  }

  private async scan(): Promise<void> {
    const started = Date.now();
    // only packs known before the listing can be judged gone: one sealed meanwhile may be missing from it
    const known = new Set(this.packs.keys());
    let names: string[];
    try {
      names = await readdir(this.layout.packsDir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      names = [];
    }
    const seen = new Set<string>();
    for (const n of names) {
      if (!n.endsWith('.idx')) continue;
      const id = n.slice(0, -4);
      if (!PACK_ID.test(id)) continue;
      seen.add(id);
      if (this.packs.has(id) || this.damaged.has(id)) continue;
      let buf: Buffer;
      try { buf = await readFile(join(this.layout.packsDir, n)); } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') { seen.delete(id); continue; }
        throw e;
      }
      const entries = decodeIndex(buf);
      if (!entries) { this.damaged.add(id); continue; }
      this.add(id, entries);
    }
    let gone = false;
    for (const id of known) if (!seen.has(id) && this.packs.delete(id)) { gone = true; this.readers.drop(this.layout.packPath(id)); }
    for (const id of [...this.damaged]) if (!seen.has(id)) this.damaged.delete(id);
    if (gone) this.rebuild();
    this.lastScan = Math.max(started, 1);
  }

  private rebuild(): void {
    this.map.clear();
    for (const [id, entries] of this.packs) for (const e of entries) if (!this.map.has(e.hex)) this.map.set(e.hex, { pack: id, offset: e.offset, length: e.length });
  }

  /** A pack this process sealed (or just read the index of). */
  add(id: string, entries: readonly PackEntry[]): void {
    this.packs.set(id, [...entries]);
    for (const e of entries) if (!this.map.has(e.hex)) this.map.set(e.hex, { pack: id, offset: e.offset, length: e.length });
  }

  /** Pack `id` is gone (gc deleted or repacked it): its chunks are looked up in other packs. */
  forget(id: string): void {
    this.readers.drop(this.layout.packPath(id));
    if (this.packs.delete(id)) this.rebuild();
  }

  /** Close the read handles kept open (the store is closing). */
  closeReaders(): Promise<void> { return this.readers.closeAll(); }

  lookup(hex: string): ChunkLocation | undefined { return this.map.get(hex); }

  /** Every sealed pack known (after `ensureLoaded`/`refresh`) with its entries. */
  allPacks(): ReadonlyMap<string, readonly PackEntry[]> { return this.packs; }

  /** Distinct chunks, bytes of chunk data in packs (copies included), and those bytes counting each chunk once. */
  totals(): { chunks: number; bytes: number; distinctBytes: number; packs: number } {
    let bytes = 0;
    for (const entries of this.packs.values()) for (const e of entries) bytes += e.length;
    let distinctBytes = 0;
    for (const loc of this.map.values()) distinctBytes += loc.length;
    return { chunks: this.map.size, bytes, distinctBytes, packs: this.packs.size };
  }

  /** Where chunk `hex` is, after a rescan when it is not known yet; undefined when no pack holds it. */
  async locate(hex: string): Promise<ChunkLocation | undefined> {
    await this.ensureLoaded();
    let loc = this.map.get(hex);
    if (!loc) { await this.refresh(); loc = this.map.get(hex); }
    return loc;
  }

  /** All bytes of chunk `hex`. Throws StoreError CHUNK_MISSING when no pack holds it. */
  async read(hex: string): Promise<Buffer> {
    return this.readRange(hex, 0, -1);
  }

  /**
   * Bytes [offset, offset + length) of chunk `hex` (zeros past its end; length -1 = to its end).
   * A pack that vanished under the reader (gc repacked it) is forgotten and the chunk found again.
   * `into`: read into its start instead of a new buffer.
   */
  async readRange(hex: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const vanished = new Set<string>();
    for (let attempt = 0; attempt < 3; attempt++) {
      const first = await this.locate(hex);
      if (!first) break;
      // the usual copy first; when its pack is gone (gc set it aside or repacked it), any other copy
      for (const loc of this.candidates(hex, first)) {
        if (vanished.has(loc.pack)) continue;
        const len = length < 0 ? loc.length : length;
        const have = Math.max(0, Math.min(len, loc.length - offset));
        try {
          const b = await this.readers.read(this.layout.packPath(loc.pack), loc.offset + offset, have, into);
          if (loc !== first) this.map.set(hex, loc);
          return have === len ? b : padded(b, len, into);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
          vanished.add(loc.pack);
        }
      }
      await this.refresh();
    }
    throw missing(hex);
  }

  /**
   * The usual copy of chunk `hex`, then every other known copy: a scan of all entries, so it runs
   * only when the usual copy's pack vanished under the reader.
   */
  private *candidates(hex: string, first: ChunkLocation): Generator<ChunkLocation> {
    yield first;
    for (const [id, entries] of this.packs) for (const e of entries) if (e.hex === hex && id !== first.pack) yield { pack: id, offset: e.offset, length: e.length };
  }
}

/**
 * One pack being written: entries are appended at offsets reserved synchronously (so concurrent
 * appends never overlap), then `seal` makes it durable with one fsync and publishes its index.
 */
export class PackWriter {
  readonly entries: PackEntry[] = [];
  private size = PACK_MAGIC.length;
  private readonly writes = new Set<Promise<void>>();
  private state: 'open' | 'synced' | 'sealed' = 'open';

  private constructor(private readonly layout: Layout, readonly id: string, private readonly fh: FileHandle) {}

  static async create(layout: Layout): Promise<PackWriter> {
    const id = newPackId();
    const fh = await open(layout.packPath(id), fsc.O_RDWR | fsc.O_CREAT | fsc.O_EXCL, 0o600);
    try {
      await writeFully(fh, PACK_MAGIC, 0);
    } catch (e) {
      await fh.close().catch(() => {});
      await unlink(layout.packPath(id)).catch(() => {});
      throw e;
    }
    return new PackWriter(layout, id, fh);
  }

  get path(): string { return this.layout.packPath(this.id); }
  /** Bytes reserved so far (header and entries, written or in flight). */
  get bytes(): number { return this.size; }
  get reserved(): boolean { return this.size > PACK_MAGIC.length; }

  /** Whether `appendChecked` can check and write in one call (the native library is built). */
  static canAppendChecked(): boolean { return nativeDigest() !== null; }

  /** Append chunk `hex`: its data offset in the pack (reserved now) and the write. */
  append(hex: string, data: Uint8Array): { offset: number; written: Promise<void> } {
    return this.appendWith(hex, data, async (head, at, offset) => {
      await writeFully(this.fh, head, at);
      await writeFully(this.fh, data, offset);
    });
  }

  /**
   * `append` of bytes whose name is only claimed (`claimed`, the 32 bytes `hex` spells): in one
   * native call (needs `canAppendChecked`) their tree digest is checked, the name appended to the
   * refs journal `refsFd` (a file opened to append) and the entry written. A refused claim writes
   * nothing and rejects with BAD_DIGEST; its reserved bytes stay a hole in the pack.
   */
  appendChecked(hex: string, data: Uint8Array, claimed: Uint8Array, refsFd: number): { offset: number; written: Promise<void> } {
    const native = nativeDigest();
    if (!native) throw new Error('appendChecked needs the native digest library');
    return this.appendWith(hex, data, async (head, at) => {
      const computed = await native.storeChecked(data, claimed, refsFd, Buffer.from(`${hex}\n`, 'latin1'), this.fh.fd, at, head);
      if (computed) throw digestRefused(claimed, computed);
    });
  }

  private appendWith(hex: string, data: Uint8Array, write: (head: Buffer, at: number, offset: number) => Promise<void>): { offset: number; written: Promise<void> } {
    const at = this.size;
    this.size += ENTRY_HEADER + data.length;
    const offset = at + ENTRY_HEADER;
    const head = Buffer.allocUnsafe(ENTRY_HEADER);
    head.writeUInt32BE(data.length, 0);
    head.write(hex, 4, 32, 'hex');
    const written = write(head, at, offset).then(() => { this.entries.push({ hex, offset, length: data.length }); });
    // a failed append is never indexed (its put fails): its bytes are only dead space in the pack
    const tracked = written.catch(() => {});
    this.writes.add(tracked);
    void tracked.then(() => this.writes.delete(tracked));
    return { offset, written };
  }

  /**
   * Wait for the appends, fsync the pack, then write its index under a temp name, fsync and rename
   * it, and add it to `index`. The caller fsyncs the packs folder before anything durable names its
   * chunks. A seal that failed (a full filesystem) may be retried: it goes on where it stopped.
   */
  async seal(index: PackIndex): Promise<void> {
    if (this.state === 'sealed') return;
    if (this.state === 'open') {
      await Promise.all([...this.writes]);
      await this.fh.sync();
      await dropFromCache(this.fh.fd);
      await this.fh.close().catch(() => {});
      this.state = 'synced';
      crashPoint('store:pack-synced');
    }
    const idx = this.layout.packIndexPath(this.id);
    const tmp = `${idx}.tmp`;
    const fh = await open(tmp, 'w', 0o600);
    try {
      await writeFully(fh, encodeIndex(this.entries), 0);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, idx);
    this.state = 'sealed';
    index.add(this.id, this.entries);
    crashPoint('store:pack-sealed');
  }

  /** Drop an unsealed pack (abort, or a failed write). */
  async discard(): Promise<void> {
    await Promise.all([...this.writes]);
    await this.fh.close().catch(() => {});
    if (this.state !== 'sealed') {
      await unlink(this.path).catch(() => {});
      await unlink(`${this.layout.packIndexPath(this.id)}.tmp`).catch(() => {});
    }
  }
}
