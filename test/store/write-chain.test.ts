import { test } from 'node:test';
import assert from 'node:assert/strict';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { WriteChain } from '../../src/store/write-chain.ts';
import { tempDir } from './helpers.ts';

test('work under one key runs in call order, each after the previous one settled, also when that one is slower or fails', async (t) => {
  const fh = await open(join(await tempDir(t, 'chain'), 'f'), 'w+');
  t.after(() => fh.close());
  const chain = new WriteChain();
  const log: string[] = [];
  const jobs: Promise<void>[] = [];
  for (let n = 0; n < 8; n++) {
    jobs.push(chain.run('0:5', async () => {
      log.push(`start ${n}`);
      await delay((8 - n) * 4); // the earlier, the slower
      await fh.write(Buffer.alloc(4096, n), 0, 4096, 0);
      log.push(`end ${n}`);
      if (n === 3) throw new Error('job 3 fails');
    }));
  }
  const results = await Promise.allSettled(jobs);
  assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'fulfilled', 'fulfilled', 'rejected', 'fulfilled', 'fulfilled', 'fulfilled', 'fulfilled']);
  assert.deepEqual(log, Array.from({ length: 8 }, (_, n) => [`start ${n}`, `end ${n}`]).flat());
  const b = Buffer.alloc(4096);
  await fh.read(b, 0, 4096, 0);
  assert.ok(b.every((x) => x === 7), 'the last call wrote last');
});

test('the first work under a key starts at once (synchronously); work under other keys does not wait', async () => {
  const chain = new WriteChain();
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  const started: string[] = [];
  const a1 = chain.run('a', async () => { started.push('a1'); await gate; });
  const a2 = chain.run('a', async () => { started.push('a2'); });
  const b1 = chain.run('b', async () => { started.push('b1'); });
  assert.deepEqual(started, ['a1', 'b1'], 'a1 and b1 started within run(), a2 waits');
  await b1;
  await delay(5);
  assert.deepEqual(started, ['a1', 'b1']);
  release();
  await Promise.all([a1, a2]);
  assert.deepEqual(started, ['a1', 'b1', 'a2']);
  // the key's queue is gone once empty: the next work starts at once again
  chain.run('a', async () => { started.push('a3'); });
  assert.equal(started.at(-1), 'a3');
});

test('settled() waits for the work tracked so far, failed or not, and not for work tracked after it was called', async () => {
  const chain = new WriteChain();
  const done: string[] = [];
  chain.track(delay(20).then(() => { done.push('slow'); }));
  chain.track(delay(5).then(() => { done.push('fails'); throw new Error('x'); }));
  const s = chain.settled();
  let release!: () => void;
  chain.track(new Promise<void>((r) => { release = r; }));
  await s;
  assert.deepEqual(done.sort(), ['fails', 'slow']);
  release();
  await chain.settled();
});
