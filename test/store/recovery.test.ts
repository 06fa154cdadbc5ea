import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openImageStore, StoreError } from '../../src/store/index.ts';
import { createCycle } from '../../src/store/new-cycle.ts';
import { reopenCycle } from '../../src/store/recovery.ts';
import { bareStore } from './cycle-parts.ts';
import { sha, storeWithImage, tempDir, writeAll } from './helpers.ts';

const CS = 64 << 10;

test('a cycle reopened after a simulated crash holds exactly what was flushed: the writes after the last flush are gone', async (t) => {
  const cap = 2 << 20;
  const { root, store, v1 } = await storeWithImage(t, { chunkSize: CS, capacity: cap, name: 'recovery' });

  const w = await store.beginCycle({ sourceId: 'vm', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
  const expect = Buffer.from(v1);
  const flushed = [[0, CS], [3 * CS + 1000, 7000], [5 * CS, CS / 16], [10 * CS - 500, 1000]] as const;
  for (const [o, l] of flushed) {
    const b = randomBytes(l);
    b.copy(expect, o);
    await w.writeExtent(0, o, l, b);
  }
  await w.flush();
  // written but never flushed: a whole chunk, a cached partial sub-chunk, a whole sub-chunk, zeros
  for (const [o, l] of [[CS, CS], [3 * CS + 100, 300], [6 * CS, CS / 16], [12 * CS, CS]] as const) {
    await w.writeExtent(0, o, l, o === 12 * CS ? null : randomBytes(l));
  }
  // the crash: the writer is dropped as it is (no flush, no detach), and the cycle reopened afresh
  const again = await openImageStore(root);
  assert.deepEqual(await again.openCycles('vm'), ['c2']);
  const w2 = await again.beginCycle({ sourceId: 'vm', cycleId: 'c2', disks: [{ disk: 0, capacity: cap }] });
  assert.equal(w2.baseImageId, '1');
  assert.deepEqual(await w2.held(), [{ disk: 0, ranges: flushed.map(([offset, length]) => ({ offset, length })) }]);
  const img = await w2.commit();
  assert.equal(sha(await again.readImage('vm', img.imageId, 0, 0, cap)), sha(expect));
});

test('reopening refuses another cycle\'s disks or base and a cycle a live process writes; a dead owner is replaced by this process', async (t) => {
  const { layout } = await bareStore(t, CS);
  const disks = [{ disk: 0, capacity: CS }, { disk: 1, capacity: 2 * CS }];
  const dir = layout.cycleDir('vm', 'c');
  assert.equal(await reopenCycle(dir, 'vm', 'c', { disks }), null, 'no cycle open yet');
  const rec = await createCycle(layout, CS, 'vm', 'c', disks, null, dir);
  const code = (c: string) => (e: unknown) => e instanceof StoreError && e.code === c;
  await assert.rejects(reopenCycle(dir, 'vm', 'c', { disks: [disks[0]!] }), code('CYCLE_MISMATCH'));
  await assert.rejects(reopenCycle(dir, 'vm', 'c', { disks: [disks[0]!, { disk: 1, capacity: CS }] }), code('CYCLE_MISMATCH'));
  await assert.rejects(reopenCycle(dir, 'vm', 'c', { disks, baseImageId: '3' }), code('CYCLE_MISMATCH'));
  assert.deepEqual(await reopenCycle(dir, 'vm', 'c', { disks, baseImageId: null }), rec);

  const other = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
  t.after(() => { if (other.exitCode === null) other.kill('SIGKILL'); });
  await new Promise((r) => other.once('spawn', r));
  await writeFile(join(dir, 'owner'), String(other.pid));
  await assert.rejects(reopenCycle(dir, 'vm', 'c', { disks }), (e: unknown) => code('CYCLE_BUSY')(e) && (e as Error).message.includes(`process ${other.pid}`));
  other.kill('SIGKILL');
  await new Promise((r) => other.once('exit', r));
  assert.deepEqual(await reopenCycle(dir, 'vm', 'c', { disks }), rec);
  assert.equal(await readFile(join(dir, 'owner'), 'utf8'), String(process.pid));
});
