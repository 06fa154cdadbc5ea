// `vmlift image export` killed with SIGKILL half-way (crash point store:export): the partial file it
// was writing is garbage; exporting the same output again finishes bit-identical and leaves no
// `.partial-` file of the dead process behind (found by the kill -9 matrix, bench/chaos).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openImageStore } from '../../src/store/index.ts';
import { sha, tempDir, writeAll } from './helpers.ts';

const bin = fileURLToPath(new URL('../../bin/vmlift', import.meta.url));

function vmlift(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; signal: string | null; err: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
    let err = '';
    p.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    p.on('error', reject);
    p.on('close', (code, signal) => resolve({ code, signal, err }));
  });
}

test('an export killed half-way leaves no partial file once the export is run again', async (t) => {
  const dir = await tempDir(t, 'export-kill');
  const dataDir = join(dir, 'data');
  const store = await openImageStore(join(dataDir, 'store'), { chunkSize: 64 << 10 });
  const cap = 4 << 20;
  const v = randomBytes(cap);
  const w = await store.beginCycle({ sourceId: 'web-1', cycleId: 'c1', disks: [{ disk: 0, capacity: cap }] });
  await writeAll(w, 0, v, 64 << 10);
  await w.commit();
  await store.close();
  const outDir = join(dir, 'out');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(outDir);
  const out = join(outDir, 'web-1.raw');
  const args = ['image', 'export', '--data-dir', dataDir, '--source', 'web-1', '--image', '1', '--output', out];

  const killed = await vmlift(args, { VMLIFT_TEST_CRASH_AT: 'store:export:10' });
  assert.equal(killed.signal, 'SIGKILL', `the export was killed at its 10th chunk: ${killed.err}`);
  const left = await readdir(outDir);
  assert.equal(left.length, 1, `the killed export left its partial file: ${left.join(', ')}`);
  assert.match(left[0]!, /^web-1\.raw\.partial-/);

  const again = await vmlift(args);
  assert.equal(again.code, 0, again.err);
  assert.deepEqual(await readdir(outDir), ['web-1.raw'], 'no partial file of the dead export is left');
  assert.equal(sha(await readFile(out)), sha(v));
});
