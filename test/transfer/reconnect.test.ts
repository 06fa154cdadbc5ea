import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Backoff, Outage, reconnectVerdict } from '../../src/transfer/reconnect.ts';
import { ConnectError } from '../../src/transfer/connect.ts';
import { RemoteError } from '../../src/transfer/control-client.ts';
import { UserError } from '../../src/util/errors.ts';

test('backoff doubles from 200 ms up to 5 s and starts over after a success', () => {
  const b = new Backoff();
  assert.deepEqual(Array.from({ length: 8 }, () => b.next()), [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
  b.reset();
  assert.equal(b.next(), 200);
});

test('an outage is measured from the first loss until it ends', () => {
  let now = 1000;
  const o = new Outage(10_000, () => now);
  assert.equal(o.exceeded, false, 'nothing lost yet');
  o.lost();
  now += 6000; o.lost();
  now += 4000;
  assert.equal(o.exceeded, false, 'exactly the limit');
  now += 1;
  assert.equal(o.exceeded, true, 'counted from the first loss, not the last');
  o.ended();
  assert.equal(o.exceeded, false);
  o.lost(); now += 10_001;
  assert.equal(o.exceeded, true);
});

test('network trouble is retried, a passing refusal waited out, a fatal one ends the session', () => {
  assert.equal(reconnectVerdict(new ConnectError('connection refused')), 'retry');
  assert.equal(reconnectVerdict(new Error('socket hang up')), 'retry');
  assert.equal(reconnectVerdict(new RemoteError(409, { code: 'CYCLE_BUSY', message: 'being committed' })), 'refused-for-now');
  assert.equal(reconnectVerdict(new RemoteError(401, { code: 'AUTH', message: 'wrong credential' })), 'fatal');
  assert.equal(reconnectVerdict(new RemoteError(0, { code: 'BAD_DIGEST', message: 'digest' })), 'fatal');
  assert.equal(reconnectVerdict(new UserError('PROXY_AUTH', 'proxy refused the credentials')), 'fatal', 'a UserError of our own');
});
