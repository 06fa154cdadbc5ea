/**
 * `vmlift image migrate`: converts a store of format 1 (one file per chunk under chunks/<hh>/) to
 * format 2 (pack files, packs.ts) in place, crash-safe and resumable:
 *   1. every chunk file is copied into packs (each pack sealed: fsync, index, folder fsync); chunks
 *      already in a sealed pack (an earlier, interrupted run) are skipped;
 *   2. store.json is rewritten (atomically) to version 2: only now does this vmlift open the store;
 *   3. chunks/ is deleted.
 * Until step 2 the store is still a valid format 1 store (its chunk files are untouched), so a crash
 * anywhere leaves either a format 1 store (run the command again: it resumes) or a format 2 store
 * with a leftover chunks/ folder (the command run again removes it). Image indexes and overlays name
 * chunks by content and need no change. The receiver must not run meanwhile: a cycle owned by a live
 * process is refused.
 */
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../util/fsync.ts';
import { isValidId } from '../util/ids.ts';
import { crashPoint } from '../util/crash.ts';
import { Layout, STORE_VERSION } from './layout.ts';
import { PackWriter } from './packs.ts';
import { PACK_BYTES } from './chunks.ts';
import { removePackLeftovers } from './gc.ts';
import { pidAlive } from './pins.ts';
import { checkStoreVersion } from './store.ts';
import { StoreError } from './types.ts';

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
}

async function names(dir: string): Promise<string[]> {
  return readdir(dir).catch((e: NodeJS.ErrnoException) => { if (e.code === 'ENOENT') return [] as string[]; throw e; });
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
  const result: MigrateResult = { root, from: meta.version, to: STORE_VERSION, chunks: 0, bytes: 0, packs: 0, alreadyPacked: 0 };
  if (meta.version === STORE_VERSION) {
    // a run that crashed after the switch: only the old chunk files are left to remove
    await rm(layout.chunksDir, { recursive: true, force: true });
    return result;
  }
  if (meta.version !== 1) checkStoreVersion(root, meta.version);
  await assertIdle(layout);
  await mkdir(layout.packsDir, { recursive: true });
  await removePackLeftovers(layout);
  const index = layout.packIndex;
  await index.refresh();
  let writer: PackWriter | null = null;
  const seal = async (): Promise<void> => {
    if (!writer) return;
    const w = writer;
    writer = null;
    await w.seal(index);
    await fsyncDir(layout.packsDir);
    result.packs++;
    crashPoint('store:migrate');
  };
  for (let b = 0; b < 256; b++) {
    const dir = join(layout.chunksDir, b.toString(16).padStart(2, '0'));
    for (const n of await names(dir)) {
      // a chunk file, or one a format 1 gc set aside and died (`.gc-<pid>-<hex>`: it may still be referenced)
      const hex = /^[0-9a-f]{64}$/.test(n) ? n : /^\.gc-[0-9]+-([0-9a-f]{64})$/.exec(n)?.[1];
      if (!hex) continue;
      if (index.lookup(hex)) { if (hex === n) result.alreadyPacked++; continue; }
      let data: Buffer;
      try { data = await readFile(join(dir, n)); } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw e;
      }
      writer ??= await PackWriter.create(layout);
      await writer.append(hex, data).written;
      result.chunks++;
      result.bytes += data.length;
      if (writer.bytes >= PACK_BYTES) await seal();
    }
  }
  await seal();
  await writeFileAtomic(layout.storeJson, JSON.stringify({ version: STORE_VERSION, chunkSize: meta.chunkSize }));
  crashPoint('store:migrate-switched');
  await rm(layout.chunksDir, { recursive: true, force: true });
  return result;
}
