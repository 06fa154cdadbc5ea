import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openImageStore, StoreError, type ImageStore } from '../../src/store/index.ts';
import { agePacks, chunkFiles, corruptChunk, loseChunk, scatter, sha, tempDir, writeAll } from './helpers.ts';

const CS = 64 << 10;
const CAP = 4 << 20;

/** gc keeps chunks younger than its start minus 2 s (see gc.ts); tests age them instead of sleeping. */
async function ageChunks(root: string): Promise<void> {
  await agePacks(root, new Date(Date.now() - 60_000));
}

async function referenced(store: ImageStore, src: string, ids: string[]): Promise<Set<string>> {
  const out = new Set<string>();
  for (const id of ids) {
    const d = await store.chunkDigests(src, id, 0, 0, CAP / CS);
    for (let k = 0; k < d.length; k += 32) {
      const h = d.toString('hex', k, k + 32);
      if (h !== '0'.repeat(64)) out.add(h);
    }
  }
  return out;
}

async function cycles(store: ImageStore, n: number): Promise<Buffer[]> {
  const versions: Buffer[] = [];
  let v = randomBytes(CAP);
  v.fill(0, CS * 10, CS * 20);
  for (let k = 1; k <= n; k++) {
    if (k > 1) { v = Buffer.from(v); scatter(v, 8); }
    const w = await store.beginCycle({ sourceId: 'vm', cycleId: `c${k}`, disks: [{ disk: 0, capacity: CAP }] });
    await writeAll(w, 0, v, k === 1 ? CS : 4096 * 16);
    await w.commit();
    versions.push(v);
  }
  return versions;
}

function holdPin(t: { after: (fn: () => void) => void }, root: string, image: string) {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./pin-holder.ts', import.meta.url)), root, 'vm', image],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => { if (d.toString().includes('pinned')) resolve(); });
    child.once('exit', () => reject(new Error('pin holder exited')));
  });
  return { ready, kill: async () => { child.kill('SIGKILL'); await new Promise((r) => child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r)); } };
}

test('retention max 2 over 4 cycles keeps exactly the 2 newest; unreferenced chunks are gone; kept images verify', async (t) => {
  const dir = await tempDir(t, 'retention');
  const root = join(dir, 'store');
  const store = await openImageStore(root, { chunkSize: CS, repackBelow: 1 });
  const v = await cycles(store, 4);
  await assert.rejects(store.applyRetention('vm', 0), (e: unknown) => e instanceof StoreError && e.code === 'BAD_RETENTION');
  await assert.rejects(store.applyRetention('vm', 11), /1-10/);
  await ageChunks(root);
  assert.deepEqual(await store.applyRetention('vm', 2), ['1', '2']);
  assert.deepEqual((await store.listImages('vm')).map((i) => i.imageId), ['3', '4']);
  assert.deepEqual(await chunkFiles(root), await referenced(store, 'vm', ['3', '4']));
  for (const [id, want] of [['3', v[2]!], ['4', v[3]!]] as const) {
    assert.equal((await store.verify('vm', id)).ok, true);
    assert.equal(sha(await store.readImage('vm', id, 0, 0, CAP)), sha(want));
  }
  // a new cycle builds on the newest kept image and numbering goes on
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c5', disks: [{ disk: 0, capacity: CAP }] });
  assert.equal(w.baseImageId, '4');
  assert.equal((await w.commit()).imageId, '5');
  assert.equal(sha(await store.readImage('vm', '5', 0, 0, CAP)), sha(v[3]!));
});

test('an image pinned by another process is skipped by retention and refused by rm; a dead pin is ignored', async (t) => {
  const dir = await tempDir(t, 'retention');
  const root = join(dir, 'store');
  const store = await openImageStore(root, { chunkSize: CS, repackBelow: 1 });
  const v = await cycles(store, 3);
  const pin = holdPin(t, root, '1');
  await pin.ready;
  await assert.rejects(store.removeImage('vm', '1'), (e: unknown) => e instanceof StoreError && e.code === 'PINNED');
  await ageChunks(root);
  assert.deepEqual(await store.applyRetention('vm', 1), ['2']);
  assert.deepEqual((await store.listImages('vm')).map((i) => i.imageId), ['1', '3']);
  assert.equal((await store.verify('vm', '1')).ok, true, 'the pinned image kept its chunks');
  assert.equal(sha(await store.readImage('vm', '1', 0, 0, CAP)), sha(v[0]!));
  await pin.kill();
  assert.deepEqual(await store.applyRetention('vm', 1), ['1']);
  assert.deepEqual((await store.listImages('vm')).map((i) => i.imageId), ['3']);
});

test('gc while a cycle is open keeps every chunk the cycle uses, flushed or not, even when its base image is removed', async (t) => {
  const dir = await tempDir(t, 'retention');
  const root = join(dir, 'store');
  const store = await openImageStore(root, { chunkSize: CS, repackBelow: 1 });
  const v = await cycles(store, 2);
  const next = Buffer.from(v[1]!);
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c3', disks: [{ disk: 0, capacity: CAP }] });
  // flushed new data, then unflushed data that reuses chunks of image 1 only
  randomBytes(CS * 3).copy(next, 0);
  await w.writeExtent(0, 0, CS * 3, next.subarray(0, CS * 3));
  await w.flush();
  // a chunk only image 1 has (changed in image 2), so only the cycle's refs journal protects it
  const only1 = Array.from({ length: CAP / CS }, (_, i) => i).find((i) => !v[0]!.subarray(i * CS, (i + 1) * CS).equals(v[1]!.subarray(i * CS, (i + 1) * CS)) && i > 3)!;
  const v1chunk = v[0]!.subarray(CS * only1, CS * (only1 + 1));
  v1chunk.copy(next, CS * 50);
  await w.writeExtent(0, CS * 50, CS, v1chunk);
  randomBytes(1000).copy(next, CS * 60 + 7);
  await w.writeExtent(0, CS * 60 + 7, 1000, next.subarray(CS * 60 + 7, CS * 60 + 1007));
  await ageChunks(root);
  await store.removeImage('vm', '1');
  await store.removeImage('vm', '2');
  await store.gc();
  const img = await w.commit();
  assert.equal(sha(await store.readImage('vm', img.imageId, 0, 0, CAP)), sha(next));
  assert.equal((await store.verify('vm', img.imageId)).ok, true);
});

test('verify reports a corrupted and a missing chunk with disk and offset', async (t) => {
  const dir = await tempDir(t, 'retention');
  const root = join(dir, 'store');
  const store = await openImageStore(root, { chunkSize: CS, repackBelow: 1 });
  await cycles(store, 1);
  const d = await store.chunkDigests('vm', '1', 0, 0, 64);
  const c3 = d.toString('hex', 3 * 32, 4 * 32);
  const c5 = d.toString('hex', 5 * 32, 6 * 32);
  await corruptChunk(root, c3, 100);
  await loseChunk(root, c5);
  const r = await (await openImageStore(root)).verify('vm', '1'); // a store opened after the loss
  assert.equal(r.ok, false);
  assert.equal(r.chunks, CAP / CS - 10);
  assert.deepEqual(r.bad.map((b) => [b.disk, b.offset]).sort((a, b) => a[1]! - b[1]!), [[0, 3 * CS], [0, 5 * CS]]);
  assert.match(r.bad.find((b) => b.offset === 3 * CS)!.reason, /corrupt/);
  assert.match(r.bad.find((b) => b.offset === 5 * CS)!.reason, /missing/);
});
