import { utimes } from 'node:fs/promises';
import { fsyncDir } from '../util/fsync.ts';
import type { Layout } from './layout.ts';
import { PackWriter, padded, readAt } from './packs.ts';
import { checkClaim } from './claims.ts';
import { treeDigestAsync, zeroTreeDigest } from '../util/tree-digest.ts';

/**
 * The one function that names chunks and sub-chunks: the tree digest of their bytes
 * (util/tree-digest.ts: SHA-256 over the SHA-256 of each 4 KiB block), which is also the wire
 * digest of an extent of those bytes. So the receiver names a chunk by the digest it just checked
 * and hashes each byte once. Off the main thread for large inputs (native when built, in place);
 * inputs up to INLINE_HASH_MAX (a sub-chunk) hash inline: cheaper than a thread hop.
 */
export function chunkDigest(data: Uint8Array): Promise<Buffer> {
  return treeDigestAsync(data);
}

/** `b` cut or zero-padded to `len` bytes (a chunk file read as the slot length it fills). */
export function fitLength(b: Buffer, len: number): Buffer {
  if (b.length === len) return b;
  const out = Buffer.alloc(len);
  b.copy(out, 0, 0, Math.min(len, b.length));
  return out;
}

/** The name of `len` zero bytes (cached): a chunk with this digest is a hole. */
export const zeroDigest: (len: number) => Buffer = zeroTreeDigest;

export function isZeroSlot(slot: Uint8Array): boolean {
  for (let i = 0; i < slot.length; i++) if (slot[i] !== 0) return false;
  return true;
}

/** The cycle's refs.log (refs.ts): names noted before a chunk is created or reused. */
export interface RefNotes {
  note(hex: string): Promise<void>;
  /** Its file, opened to append. */
  readonly fd: number;
}

/** Bytes of a pack before the writer seals it and starts the next (a flush seals the open one early). */
export const PACK_BYTES = 32 << 20;
/** How stale a writer's view of other processes' packs may be for dedup (a missed dedup only costs a copy gc later drops). */
const DEDUP_RESCAN_MS = 2000;

/**
 * The chunks of one cycle writer, in pack files (packs.ts). A new chunk is appended to the writer's
 * open pack; a pack is sealed (one fsync, then its index) when it reaches PACK_BYTES and at every
 * `sync`, so a chunk is visible to other writers only once it is durable. Chunk names are given by
 * the caller (extent-writer.ts names them with `chunkDigest`, the one naming function).
 */
export class ChunkWriter {
  /** Chunks this writer appended to packs it has not sealed yet. */
  private readonly local = new Map<string, { pack: PackWriter; offset: number; length: number; written: Promise<void> }>();
  /** hex -> the put storing it now (a second put of the same chunk waits for the first). */
  private readonly putting = new Map<string, Promise<void>>();
  /** Chunks this writer knows are in sealed packs and protected by its refs journal. */
  private readonly confirmed = new Set<string>();
  private current: PackWriter | null = null;
  private opening: Promise<PackWriter> | null = null;
  private readonly sealing = new Set<Promise<void>>();
  /** Packs whose seal failed (a full filesystem): the next sync seals them first. Their chunks are read from them meanwhile. */
  private readonly unsealed = new Set<PackWriter>();
  private unsealedBytes = 0;
  /** A pack was sealed or reused since the last sync: the packs folder needs an fsync. */
  private dirDirty = false;
  newChunks = 0;
  newBytes = 0;
  newPacks = 0;

  constructor(private readonly layout: Layout, private readonly refs: RefNotes,
    private readonly packBytes = PACK_BYTES) {}

  /** Make sure a chunk named `hex` with content `data` exists (durably after the next `sync`). */
  put(hex: string, data: Uint8Array): Promise<void> {
    // a put in flight first: its append is in `local` before its bytes are written, and may still fail
    const inFlight = this.putting.get(hex);
    if (inFlight) return inFlight;
    if (this.local.has(hex) || this.confirmed.has(hex)) return Promise.resolve();
    const p = this.doPut(hex, data).finally(() => this.putting.delete(hex));
    this.putting.set(hex, p);
    return p;
  }

  /**
   * `put` of bytes whose name `digest` is only claimed: checked against them before anything names
   * them (BAD_DIGEST, nothing stored, when it differs). A new chunk is checked and appended in one
   * native call (packs.ts, `appendChecked`); one this writer or the store already holds is hashed
   * first, so a claim never makes a writer reuse content it was not sent.
   */
  putChecked(hex: string, data: Uint8Array, digest: Buffer): Promise<void> {
    if (this.putting.has(hex) || this.local.has(hex) || this.confirmed.has(hex) || !PackWriter.canAppendChecked()) {
      return checkClaim(data, digest).then(() => this.put(hex, data));
    }
    const p = this.doPut(hex, data, digest).finally(() => this.putting.delete(hex));
    this.putting.set(hex, p);
    return p;
  }

  /**
   * `claimed`: the digest `hex` names is to be checked against `data` (putChecked); a new chunk's
   * reference is then journaled by the native call that appends it, after the check and before its
   * bytes are written.
   */
  private async doPut(hex: string, data: Uint8Array, claimed: Buffer | null = null): Promise<void> {
    // Journal the reference before reusing a pack: gc either sees the journal entry, or runs its
    // mark before it and then sees the pack's mtime newer than its start (see gc.ts).
    if (!claimed) await this.refs.note(hex);
    const index = this.layout.packIndex;
    await index.ensureLoaded();
    await index.refreshIfOlder(DEDUP_RESCAN_MS);
    const now = new Date();
    if (claimed && index.lookup(hex)) {
      await checkClaim(data, claimed);
      claimed = null;
      await this.refs.note(hex);
    }
    for (let loc = index.lookup(hex); loc; loc = index.lookup(hex)) {
      try {
        await utimes(this.layout.packPath(loc.pack), now, now);
        this.confirmed.add(hex);
        this.dirDirty = true;
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        index.forget(loc.pack); // gc took that pack: another copy, or a new one
      }
    }
    const pack = await this.openPack();
    const { offset, written } = claimed ? pack.appendChecked(hex, data, claimed, this.refs.fd) : pack.append(hex, data);
    const entry = { pack, offset, length: data.length, written };
    this.local.set(hex, entry);
    try {
      await written;
    } catch (e) {
      this.local.delete(hex);
      throw e;
    }
    this.newChunks++;
    this.newBytes += data.length;
    this.unsealedBytes += data.length;
    if (pack === this.current && pack.bytes >= this.packBytes) {
      this.current = null;
      this.seal(pack).catch(() => {}); // a failure is kept in `unsealed`: the next sync retries and reports it
    }
    // Bound what is written but not durable (and the time a flush has to wait for it).
    if (this.unsealedBytes >= 2 * this.packBytes) await Promise.all([...this.sealing]);
  }

  private openPack(): Promise<PackWriter> {
    if (this.current) return Promise.resolve(this.current);
    this.opening ??= PackWriter.create(this.layout).then((p) => {
      this.current = p;
      this.newPacks++;
      return p;
    }).finally(() => { this.opening = null; });
    return this.opening;
  }

  private seal(pack: PackWriter): Promise<void> {
    this.unsealed.delete(pack);
    const p = pack.seal(this.layout.packIndex).then(() => {
      for (const e of pack.entries) {
        this.confirmed.add(e.hex);
        const l = this.local.get(e.hex);
        if (l?.pack === pack) { this.local.delete(e.hex); this.unsealedBytes -= e.length; }
      }
      this.dirDirty = true;
    }, (e: unknown) => { this.unsealed.add(pack); throw e; });
    const tracked = p.catch(() => {}).finally(() => this.sealing.delete(tracked));
    this.sealing.add(tracked);
    return p;
  }

  /** Bytes of chunk `hex`, also while its pack is not sealed. */
  async read(hex: string): Promise<Buffer> {
    await this.putting.get(hex)?.catch(() => {});
    const l = this.local.get(hex);
    if (l) { await l.written; return readAt(l.pack.path, l.offset, l.length); }
    return this.layout.packIndex.read(hex);
  }

  /**
   * Bytes [offset, offset + length) of chunk `hex` (zeros past its end), also while its pack is not
   * sealed; into the start of `into` when given.
   */
  async readRange(hex: string, offset: number, length: number, into?: Buffer): Promise<Buffer> {
    await this.putting.get(hex)?.catch(() => {});
    const l = this.local.get(hex);
    if (!l) return this.layout.packIndex.readRange(hex, offset, length, into);
    await l.written;
    const have = Math.max(0, Math.min(length, l.length - offset));
    const b = await readAt(l.pack.path, l.offset + offset, have, into);
    return have === length ? b : padded(b, length, into);
  }

  /** Everything put so far is in sealed packs, and their folder entries are durable. */
  async sync(): Promise<void> {
    // the packs sealing now, the open one, and any whose seal failed before: all must be sealed
    await Promise.all([...this.sealing]);
    const todo = [...this.unsealed];
    if (this.current?.reserved) { todo.push(this.current); this.current = null; }
    await Promise.all(todo.map((pack) => this.seal(pack)));
    if (this.dirDirty) {
      this.dirDirty = false;
      try { await fsyncDir(this.layout.packsDir); } catch (e) { this.dirDirty = true; throw e; }
    }
  }

  /** Drop the unsealed pack (abort). Sealed ones become garbage for gc. */
  async discard(): Promise<void> {
    await Promise.all([...this.putting.values()].map((p) => p.catch(() => {})));
    await this.opening?.catch(() => {});
    await Promise.all([...this.sealing]);
    const packs = [...this.unsealed, ...(this.current ? [this.current] : [])];
    this.current = null;
    this.unsealed.clear();
    this.local.clear();
    this.unsealedBytes = 0;
    for (const pack of packs) await pack.discard();
  }
}
