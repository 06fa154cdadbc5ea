import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { openImageStore } from '../../src/store/index.ts';
import { sha, tempDir, writeAll } from './helpers.ts';

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
