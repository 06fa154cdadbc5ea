import { test } from 'node:test';
import assert from 'node:assert/strict';
import { commitBody, commitWithRetries, type CommitAttempts } from '../../src/transfer/commit.ts';
import { ConnectError } from '../../src/transfer/connect.ts';
import { RemoteError } from '../../src/transfer/control-client.ts';
import type { ImageInfo } from '../../src/model/images.ts';

const image = { imageId: '3', cycleId: 'c1' } as ImageInfo;
const expected = [{ disk: 0, ranges: [{ offset: 0, length: 512 }] }];
const notOpen = () => new RemoteError(404, { code: 'CYCLE_NOT_OPEN', message: 'not open' });

test('the body sends digests (and asks for verification) only when the sender checks sums', () => {
  const sourceDigests = [{ disk: 0, sha256: 'ab' }];
  assert.deepEqual(commitBody({ meta: { a: 1 }, sourceDigests }, expected, true, 3), { meta: { a: 1 }, expected, verify: true, sourceDigests, maxImages: 3 });
  assert.deepEqual(commitBody({ sourceDigests }, expected, false, undefined), { meta: {}, expected, verify: false });
  assert.deepEqual(commitBody({}, expected, true, undefined), { meta: {}, expected, verify: false });
});

test('a digest tree over exactly the expected ranges goes without them; other ranges go along', () => {
  const root = 'cd'.repeat(32);
  const exp = [{ disk: 0, ranges: [{ offset: 0, length: 512 }, { offset: 4096, length: 1024 }] }, { disk: 1, ranges: [{ offset: 0, length: 4096 }] }];
  const body = commitBody({ sourceDigests: [
    { disk: 0, tree: { ranges: [{ offset: 0, length: 512 }, { offset: 4096, length: 1024 }], root } },
    { disk: 1, tree: { ranges: [{ offset: 0, length: 512 }], root } },
  ] }, exp, true, undefined);
  assert.deepEqual(body.sourceDigests, [{ disk: 0, tree: { root } }, { disk: 1, tree: { ranges: [{ offset: 0, length: 512 }], root } }]);
});

/** A scripted receiver: each send() takes the next outcome. */
function attempts(outcomes: (ImageInfo | Error)[], over: Partial<CommitAttempts> = {}) {
  const log: string[] = [];
  let now = 0;
  const a: CommitAttempts = {
    send: async () => { log.push('send'); const o = outcomes.shift()!; if (o instanceof Error) throw o; return o; },
    findCommitted: async () => { log.push('find'); return undefined; },
    reopen: async () => { log.push('reopen'); },
    timeoutMs: 10_000,
    sleep: async (ms) => { log.push(`sleep ${ms}`); now += ms; },
    now: () => now,
    ...over,
  };
  return { a, log };
}

test('network failures are retried with backoff until the commit goes through', async () => {
  const { a, log } = attempts([new ConnectError('reset'), new Error('socket hang up'), image]);
  assert.equal(await commitWithRetries(a), image);
  assert.deepEqual(log, ['send', 'sleep 200', 'send', 'sleep 400', 'send']);
});

test('network failures past the timeout end the commit', async () => {
  const { a } = attempts(Array.from({ length: 20 }, () => new ConnectError('down')), { timeoutMs: 3000 });
  await assert.rejects(commitWithRetries(a), /down/);
});

test('a refusal ends the commit at once', async () => {
  const { a, log } = attempts([new RemoteError(409, { code: 'MISSING_EXTENTS', message: 'missing' })]);
  await assert.rejects(commitWithRetries(a), (e: unknown) => e instanceof RemoteError && e.code === 'MISSING_EXTENTS');
  assert.deepEqual(log, ['send']);
});

test('a commit whose answer was lost: the image already exists', async () => {
  const { a, log } = attempts([new ConnectError('reset'), notOpen()], { findCommitted: async () => { log.push('find'); return image; } });
  assert.equal(await commitWithRetries(a), image);
  assert.deepEqual(log, ['send', 'sleep 200', 'send', 'find']);
});

test('a receiver restart: the cycle is begun again once, then committed; a second CYCLE_NOT_OPEN ends it', async () => {
  const ok = attempts([notOpen(), image]);
  assert.equal(await commitWithRetries(ok.a), image);
  assert.deepEqual(ok.log, ['send', 'find', 'reopen', 'send']);
  const twice = attempts([notOpen(), notOpen()]);
  await assert.rejects(commitWithRetries(twice.a), (e: unknown) => e instanceof RemoteError && e.code === 'CYCLE_NOT_OPEN');
  assert.deepEqual(twice.log, ['send', 'find', 'reopen', 'send']);
});
