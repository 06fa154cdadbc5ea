/**
 * `vmlift image migrate`: converts a store of format 1 (one file per chunk under chunks/<hh>/, named
 * by the plain SHA-256 of its bytes) to format 2 (pack files, packs.ts; chunks named by their tree
 * digest, chunks.ts) in place, crash-safe and resumable:
 *   1. every chunk file is copied into packs under its new name (the tree digest of its bytes), each
 *      pack sealed (fsync, index, folder fsync); then the old -> new names of its chunks are appended
 *      to migrate.map (fixed records with a checksum each, fsynced). A chunk whose old name the map
 *      holds and whose new name a sealed pack holds (an earlier, interrupted run) is skipped;
 *   2. every file that names chunks is rewritten with the new names, each atomically (temp, fsync,
 *      rename): per image and per open cycle, disk-<n>.idx (a slot names the tree digest of the
 *      slot's bytes, as a format 2 writer would: a chunk shorter or longer than its slot (a disk that
 *      grew or shrank) is stored again cut or zero-padded to the slot; a slot whose bytes are all zero,
 *      or that names the old hole digest SHA-256(zeros), becomes a hole), disk-<n>.sub (the same per
 *      sub-chunk) and refs.log. A name the map does not hold is kept: it is new already (the rewrite
 *      is idempotent, so a rerun after a kill rewrites the rest) or its chunk was missing in format 1;
 *   3. store.json is rewritten (atomically) to version 2: only now does this vmlift open the store;
 *   4. chunks/ and migrate.map are deleted.
 * A crash before step 3 leaves a format 1 store that only this command opens (run it again: it
 * resumes); after it, a format 2 store with leftovers that the command run again removes. The
 * receiver must not run meanwhile: a cycle owned by a live process is refused.
 */
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../util/fsync.ts';
import { isValidId } from '../util/ids.ts';
import { crashPoint } from '../util/crash.ts';
import { Layout, SLOT, STORE_VERSION } from './layout.ts';
import { PackWriter, type PackIndex } from './packs.ts';
import { chunkDigest, fitLength, isZeroSlot, PACK_BYTES, zeroDigest } from './chunks.ts';
import { removePackLeftovers } from './gc.ts';
import { pidAlive } from './pins.ts';
import { checkStoreVersion } from './store.ts';
import { StoreError } from './types.ts';
import { MigrateMap } from './migrate-map.ts';
import { encodeRecords, RECORD, RESET, subSize } from './overlay.ts';

export interface MigrateResult {
  root: string;
  /** The version found (1, or 2 when there was nothing left to do). */
  from: number;
  to: number;
  /** Chunk files copied into packs by this run, their bytes, and the packs written. */
  chunks: number;
  bytes: number;
  packs: number;
  /** Chunks an earlier interrupted run had already copied. */
  alreadyPacked: number;
  /** Index, overlay and refs files rewritten with the new names by this run. */
  rewrittenFiles: number;
  /** Chunks stored again cut or zero-padded to the length of a slot that reads them (a disk that grew or shrank). */
  refitted: number;
  /** Slots and sub-chunks naming a chunk the format 1 store had no file for (the name is kept: `vmlift image verify` reports it missing). */
  missing: number;
}

async function names(dir: string): Promise<string[]> {
  return readdir(dir).catch((e: NodeJS.ErrnoException) => { if (e.code === 'ENOENT' || e.code === 'ENOTDIR') return [] as string[]; throw e; });
}

/** Refuse while a live process (a receiver) owns a cycle of the store. */
async function assertIdle(layout: Layout): Promise<void> {
  for (const src of (await names(layout.sourcesDir)).filter(isValidId)) {
    for (const c of await names(layout.cyclesDir(src))) {
      const pid = Number((await readFile(join(layout.cyclesDir(src), c, 'owner'), 'utf8').catch(() => '')).trim());
      if (pid && pid !== process.pid && pidAlive(pid)) {
        throw new StoreError('STORE_BUSY', `cycle ${c} of source ${src} is being written by process ${pid}: the store cannot be migrated while a receiver uses it`,
          { fix: `stop the receiver (process ${pid}), then run \`vmlift image migrate\` again`, transient: true });
      }
    }
  }
}

/** The old (format 1) name of `len` zero bytes: SHA-256 of them (a hole, when a slot names it). */
const oldZeros = new Map<number, string>();
function oldZeroName(len: number): string {
  let h = oldZeros.get(len);
  if (!h) { h = createHash('sha256').update(Buffer.alloc(len)).digest('hex'); oldZeros.set(len, h); }
  return h;
}

const ZERO = Buffer.alloc(SLOT);

/** Copies chunk data into packs; `flush` seals the open pack and makes its folder entry durable. */
class Packer {
  private writer: PackWriter | null = null;
  packs = 0;
  constructor(private readonly layout: Layout, private readonly index: PackIndex) {}

  async put(hex: string, data: Buffer): Promise<void> {
    this.writer ??= await PackWriter.create(this.layout);
    await this.writer.append(hex, data).written;
  }

  get due(): boolean { return (this.writer?.bytes ?? 0) >= PACK_BYTES; }
  /** Bytes appended to the open pack: something to seal. */
  get open(): boolean { return this.writer?.reserved ?? false; }

  async flush(): Promise<void> {
    const w = this.writer;
    if (!w) return;
    this.writer = null;
    if (!w.reserved) { await w.discard(); return; }
    await w.seal(this.index);
    await fsyncDir(this.layout.packsDir);
    this.packs++;
  }
}

/** Gives each old name its format 2 name for a slot (or sub-chunk) of `len` bytes; null = hole. */
class Renamer {
  /** Refitted names per (new name, length), so a chunk shared by many slots is stored once. */
  private readonly refits = new Map<string, string | null>();
  refitted = 0;
  missing = 0;
  constructor(private readonly map: MigrateMap, private readonly index: PackIndex, private readonly packer: Packer) {}

  /** The new name of a chunk named `hex` in a refs journal (no slot length there): its own tree digest. */
  mapName(hex: string): string { return this.map.get(hex) ?? hex; }

  async name(slot: Buffer, len: number | null): Promise<Buffer | null> {
    if (isZeroSlot(slot)) return null;
    const old = slot.toString('hex');
    if (len !== null && old === oldZeroName(len)) return null;
    const neu = this.map.get(old);
    if (neu === undefined) {
      // new already (a rerun), or a chunk the format 1 store had lost: kept as it is
      if (!this.index.lookup(old)) this.missing++;
      return slot;
    }
    const loc = this.index.lookup(neu);
    if (!loc) throw new StoreError('BAD_STORE', `chunk ${neu} (format 1 name ${old}) is in migrate.map but in no pack`, { fix: 'run `vmlift image migrate` again' });
    if (len === null || loc.length === len) return neu === zeroDigest(loc.length).toString('hex') ? null : Buffer.from(neu, 'hex');
    const key = `${neu}/${len}`;
    let refit = this.refits.get(key);
    if (refit === undefined) {
      // a chunk read as a slot of another length (the disk grew or shrank): named, and stored, as those slot bytes
      const data = fitLength(await this.index.read(neu), len);
      if (isZeroSlot(data)) refit = null;
      else {
        refit = (await chunkDigest(data)).toString('hex');
        if (!this.index.lookup(refit)) { await this.packer.put(refit, data); this.refitted++; }
      }
      this.refits.set(key, refit);
    }
    return refit === null ? null : Buffer.from(refit, 'hex');
  }
}

interface DiskShape { disk: number; capacity: number }

/** The disks and chunk size a folder's record (image.json or cycle.json) gives, or null when it has none. */
async function shapeOf(dir: string, file: string): Promise<{ chunkSize: number; disks: DiskShape[] } | null> {
  try {
    const r = JSON.parse(await readFile(join(dir, file), 'utf8')) as { chunkSize?: number; disks?: DiskShape[] };
    return Number.isInteger(r.chunkSize) && Array.isArray(r.disks) ? { chunkSize: r.chunkSize!, disks: r.disks } : null;
  } catch {
    return null;
  }
}

/**
 * Rewrite the chunk names of one image or cycle folder. The new contents are computed first; chunks
 * stored again for them are sealed before any file is renamed into place.
 */
async function rewriteDir(dir: string, recordFile: string, chunkSize: number, renamer: Renamer, packer: Packer): Promise<number> {
  const files = await names(dir);
  // a rewrite an earlier run was killed in
  for (const n of files) if (/^(disk-[0-9]+\.(idx|sub)|refs\.log)\.tmp-/.test(n)) await rm(join(dir, n), { force: true });
  const shape = await shapeOf(dir, recordFile);
  const cs = shape?.chunkSize ?? chunkSize;
  const out: [string, Buffer][] = [];
  for (const n of files) {
    const m = /^disk-([0-9]+)\.(idx|sub)$/.exec(n);
    if (!m) continue;
    // without a record (a commit's temp folder) a slot is named at its chunk's own length
    const cap = shape?.disks.find((d) => d.disk === Number(m[1]))?.capacity;
    const slotLen = (i: number): number | null => cap === undefined ? null : Math.max(0, Math.min(cs, cap - i * cs));
    const buf = await readFile(join(dir, n));
    let changed = false;
    if (m[2] === 'idx') {
      const outBuf = Buffer.alloc(buf.length - (buf.length % SLOT));
      for (let i = 0; i * SLOT < outBuf.length; i++) {
        const slot = buf.subarray(i * SLOT, (i + 1) * SLOT);
        const len = slotLen(i);
        // a slot past the disk's end (read by no one, marked by gc) is named at its chunk's own length
        const neu = await renamer.name(slot, len === 0 ? null : len);
        (neu ?? ZERO).copy(outBuf, i * SLOT);
        if (!(neu ?? ZERO).equals(slot)) changed = true;
      }
      if (changed) out.push([n, outBuf]);
    } else {
      const ss = subSize(cs);
      const records: { slot: number; sub: number; digest: Buffer | null }[] = [];
      for (let k = 0; k + RECORD <= buf.length; k += RECORD) {
        const slot = buf.readUInt32BE(k); const sub = buf.readUInt16BE(k + 4);
        const digest = buf.subarray(k + 6, k + RECORD);
        if (sub === RESET) { records.push({ slot, sub, digest: null }); continue; }
        const sl = slotLen(slot);
        const len = sl === null ? null : Math.min(ss, sl - sub * ss);
        // a sub-chunk past a shrunk slot's end is read by no one but verified: named at its own length
        const neu = await renamer.name(digest, len !== null && len <= 0 ? null : len);
        if (!(neu ?? ZERO).equals(digest)) changed = true;
        records.push({ slot, sub, digest: neu });
      }
      if (changed || buf.length % RECORD !== 0) out.push([n, encodeRecords(records)]);
    }
  }
  if (files.includes('refs.log')) {
    const text = await readFile(join(dir, 'refs.log'), 'utf8');
    const lines = text.split('\n').map((l) => (l.length === 64 ? renamer.mapName(l) : l));
    const neu = lines.join('\n');
    if (neu !== text) out.push(['refs.log', Buffer.from(neu)]);
  }
  if (packer.open) await packer.flush();
  for (const [n, data] of out) {
    await writeFileAtomic(join(dir, n), data);
    crashPoint('store:migrate-rewritten');
  }
  return out.length;
}

export async function migrateStore(root: string): Promise<MigrateResult> {
  const layout = new Layout(root);
  let meta: { version: number; chunkSize: number };
  try {
    meta = JSON.parse(await readFile(layout.storeJson, 'utf8')) as { version: number; chunkSize: number };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new StoreError('NOT_FOUND', `${root} is not an image store (no store.json)`, { fix: 'give --data-dir the folder the receiver runs with' });
    }
    throw e;
  }
  const result: MigrateResult = { root, from: meta.version, to: STORE_VERSION, chunks: 0, bytes: 0, packs: 0, alreadyPacked: 0, rewrittenFiles: 0, refitted: 0, missing: 0 };
  const mapPath = join(root, 'migrate.map');
  if (meta.version === STORE_VERSION) {
    // a run that crashed after the switch: only the old chunk files and the map are left to remove
    await rm(layout.chunksDir, { recursive: true, force: true });
    await rm(mapPath, { force: true });
    return result;
  }
  if (meta.version !== 1) checkStoreVersion(root, meta.version);
  await assertIdle(layout);
  await mkdir(layout.packsDir, { recursive: true });
  await removePackLeftovers(layout);
  const index = layout.packIndex;
  await index.refresh();
  const map = await MigrateMap.open(mapPath);
  try {
    const packer = new Packer(layout, index);
    const sealed = async (): Promise<void> => {
      await packer.flush();
      await map.flush();
      crashPoint('store:migrate');
    };
    // 1. chunk files into packs under their new names
    for (let b = 0; b < 256; b++) {
      const dir = join(layout.chunksDir, b.toString(16).padStart(2, '0'));
      for (const n of await names(dir)) {
        // a chunk file, or one a format 1 gc set aside and died (`.gc-<pid>-<hex>`: it may still be referenced)
        const hex = /^[0-9a-f]{64}$/.test(n) ? n : /^\.gc-[0-9]+-([0-9a-f]{64})$/.exec(n)?.[1];
        if (!hex) continue;
        const known = map.get(hex);
        if (known && index.lookup(known)) { if (hex === n) result.alreadyPacked++; continue; }
        let data: Buffer;
        try { data = await readFile(join(dir, n)); } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
          throw e;
        }
        const neu = (await chunkDigest(data)).toString('hex');
        // already packed under its new name (a run killed before the map got it): only the map needs it
        if (!index.lookup(neu)) {
          await packer.put(neu, data);
          result.chunks++;
          result.bytes += data.length;
        }
        map.note(hex, neu);
        if (packer.due) await sealed();
      }
    }
    await sealed();
    // 2. every file that names chunks, with the new names
    const renamer = new Renamer(map, index, packer);
    for (const src of (await names(layout.sourcesDir)).filter(isValidId)) {
      for (const i of await names(layout.imagesDir(src))) {
        result.rewrittenFiles += await rewriteDir(join(layout.imagesDir(src), i), 'image.json', meta.chunkSize, renamer, packer);
      }
      for (const c of await names(layout.cyclesDir(src))) {
        result.rewrittenFiles += await rewriteDir(join(layout.cyclesDir(src), c), 'cycle.json', meta.chunkSize, renamer, packer);
      }
    }
    await packer.flush();
    result.packs = packer.packs;
    result.refitted = renamer.refitted;
    result.missing = renamer.missing;
  } finally {
    await map.close();
  }
  // 3. the switch, 4. the old files
  await writeFileAtomic(layout.storeJson, JSON.stringify({ version: STORE_VERSION, chunkSize: meta.chunkSize }));
  crashPoint('store:migrate-switched');
  await rm(layout.chunksDir, { recursive: true, force: true });
  await rm(mapPath, { force: true });
  return result;
}
