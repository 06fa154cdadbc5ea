import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { openImageStore } from '../../src/store/index.ts';
import { chunkFiles, chunkLocation, sha, tempDir, writeAll } from './helpers.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';

test('gc running over and over in one process never deletes chunks a cycle in another process is reusing', async (t) => {
  const dir = await tempDir(t, 'gc');
  const root = join(dir, 'store');
  const cs = 64 << 10;
  const cap = 8 << 20;
  const store = await openImageStore(root, { chunkSize: cs });
  const v = randomBytes(cap);
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'first', disks: [{ disk: 0, capacity: cap }] });
  await writeAll(w, 0, v, cs);
  await w.commit();
  await sleep(2200); // the chunks are now older than gc's grace period
  await store.removeImage('vm', '1'); // nothing references them any more
  const file = join(dir, 'v.raw');
  await writeFile(file, v);

  // mixed extents: whole chunks (dedup by digest) and unaligned ones (patched through the cache)
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(new URL('./reuse-writer.ts', import.meta.url)), root, file, String(cs / 2 + 4096)],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  let out = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  const exited = new Promise<number | null>((r) => child.once('exit', r));
  let rounds = 0;
  let removed = 0;
  while (child.exitCode === null) {
    removed += (await store.gc()).removedChunks;
    rounds++;
  }
  assert.equal(await exited, 0);
  const id = out.trim();
  assert.equal(id, '2');
  assert.ok(rounds >= 2, `gc ran ${rounds} times during the cycle`);
  const r = await store.verify('vm', id);
  assert.deepEqual(r.bad, []);
  assert.equal(sha(await store.readImage('vm', id, 0, 0, cap)), sha(v));
  t.diagnostic(`gc rounds ${rounds}, chunks removed meanwhile ${removed}`);
});

/** Two images whose chunks share nothing; image 1's become garbage when retention keeps 1. */
async function twoVersions(root: string, cs: number, cap: number, opts: { gcGraceMs?: number } = {}) {
  const store = await openImageStore(root, { chunkSize: cs, ...opts });
  const v1 = randomBytes(cap); const v2 = randomBytes(cap);
  for (const [id, v] of [['one', v1], ['two', v2]] as const) {
    const w = await store.beginCycle({ sourceId: 'vm', cycleId: id, disks: [{ disk: 0, capacity: cap }] });
    await writeAll(w, 0, v, cs);
    await w.commit();
  }
  return { store, v1, v2 };
}

/** Chunk names of a buffer of random (never all-zero) data. */
function chunkFilesOf(buf: Buffer, cs: number): string[] {
  const out: string[] = [];
  for (let o = 0; o < buf.length; o += cs) out.push(treeDigest(buf.subarray(o, o + cs)).toString('hex'));
  return out;
}

const exists = async (p: string): Promise<boolean> => (await stat(p).catch(() => null)) !== null;

/** Age the packs holding `names` (gc's grace is judged per pack). */
async function ageChunks(root: string, names: Iterable<string>, byMs: number): Promise<void> {
  const t = new Date(Date.now() - byMs);
  for (const n of names) await utimes((await chunkLocation(root, n)).path, t, t);
}

test('garbage spared by the grace is owed: the next retention pass collects it even when it removes no image', async (t) => {
  const root = join(await tempDir(t, 'gc-owed'), 'store');
  const cs = 64 << 10; const cap = 1 << 20;
  const { store, v1, v2 } = await twoVersions(root, cs, cap);
  t.after(() => store.close());
  const old = await chunkFiles(root);
  assert.deepEqual(await store.applyRetention('vm', 1), ['1']);
  // image 1's chunks were written just now: inside the grace, so this pass spares them and says so
  assert.ok(await exists(join(root, 'gc.pending')), 'the store records the sweep it owes');
  const live = new Set(chunkFilesOf(v2, cs));
  const garbage = [...old].filter((h) => !live.has(h));
  assert.equal(garbage.length, cap / cs);
  for (const h of garbage) assert.ok((await chunkFiles(root)).has(h), 'spared within the grace');
  await ageChunks(root, garbage, 60_000);

  // a commit whose retention removes nothing still pays the debt
  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'three', disks: [{ disk: 0, capacity: cap }] });
  await writeAll(w, 0, v2, cs);
  await w.commit();
  assert.deepEqual(await store.applyRetention('vm', 2), []);
  const left = await chunkFiles(root);
  for (const h of garbage) assert.ok(!left.has(h), `owed garbage ${h.slice(0, 12)} collected`);
  assert.equal(await exists(join(root, 'gc.pending')), false, 'nothing owed any more');
  assert.equal(sha(await store.readImage('vm', '3', 0, 0, cap)), sha(v2));
  assert.deepEqual(new Set(garbage), new Set(chunkFilesOf(v1, cs)));
});

test('an idle store collects owed garbage by itself once the grace has passed, also after a restart', async (t) => {
  const root = join(await tempDir(t, 'gc-idle'), 'store');
  const cs = 64 << 10; const cap = 1 << 20; const grace = 400;
  const { store, v2 } = await twoVersions(root, cs, cap, { gcGraceMs: grace });
  const before = await chunkFiles(root);
  await store.applyRetention('vm', 1);
  const r = await store.gc();
  assert.equal(r.removedChunks, 0, 'all garbage is younger than the grace');
  assert.equal(r.deferredChunks, cap / cs);
  // closed before the owed sweep ran: the debt is on disk, not in memory
  await store.close();
  assert.ok(await exists(join(root, 'gc.pending')));
  assert.deepEqual(await chunkFiles(root), before);

  const reopened = await openImageStore(root, { gcGraceMs: grace });
  t.after(() => reopened.close());
  const until = Date.now() + 10_000;
  while (await exists(join(root, 'gc.pending'))) {
    assert.ok(Date.now() < until, 'the owed sweep ran within 10 s');
    await sleep(50);
  }
  assert.deepEqual(await chunkFiles(root), new Set(chunkFilesOf(v2, cs)));
  assert.equal(sha(await reopened.readImage('vm', '2', 0, 0, cap)), sha(v2));
});
