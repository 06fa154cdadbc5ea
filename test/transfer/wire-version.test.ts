/**
 * The sender's side of the wire version: a receiver that declares another version (or none: a
 * receiver of version 1) is refused at connect, naming both versions and which side to upgrade.
 * The receiver's side runs against a real receiver in test/receiver/refusals.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WIRE_VERSION, WireVersionError, checkReceiverWireVersion, declaredWireVersion } from '../../src/transfer/wire-version.ts';

test('a receiver of wire version 1 (whoami without a version) or of a later one is refused with both versions and the fix', () => {
  assert.equal(WIRE_VERSION, 2);
  checkReceiverWireVersion(2, 'rx:8080');
  assert.throws(() => checkReceiverWireVersion(undefined, 'rx:8080'), (e: unknown) => {
    assert.ok(e instanceof WireVersionError);
    assert.equal(e.code, 'WIRE_VERSION');
    assert.match(e.message, /receiver rx:8080 speaks wire version 1, this sender wire version 2/);
    assert.match(e.fix!, /upgrade the receiver/);
    return true;
  });
  assert.throws(() => checkReceiverWireVersion(3, 'rx:8080'), (e: unknown) => e instanceof WireVersionError && /upgrade this agent or connector/.test(e.fix!));
  assert.throws(() => checkReceiverWireVersion('x', 'rx:8080'), /an unknown wire version/);
});

test('declared versions: missing is 1, a header string counts, junk is unknown', () => {
  assert.equal(declaredWireVersion(undefined), 1);
  assert.equal(declaredWireVersion('2'), 2);
  assert.equal(declaredWireVersion(2), 2);
  assert.equal(declaredWireVersion(['2']), null);
  assert.equal(declaredWireVersion(0), null);
});
