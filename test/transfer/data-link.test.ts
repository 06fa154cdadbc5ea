/** One data connection against a real receiver: HELLO/READY, ACKs after SYNC, resume of a known stream, refusals. */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestReceiver, type TestRx } from './helpers.ts';
import { DataLink, type DataLinkEvents } from '../../src/transfer/data-link.ts';
import { ControlClient, RemoteError } from '../../src/transfer/control-client.ts';
import { CODEC, encodeExtentHeader } from '../../src/transfer/protocol.ts';
import type { HelloFrame } from '../../src/transfer/contract.ts';
import { WIRE_VERSION } from '../../src/transfer/wire-version.ts';

let t: TestRx;
let target: { host: string; port: number; fingerprint: string; dataPort: number };
let credential: string;

before(async () => {
  t = await startTestReceiver();
  target = { host: '127.0.0.1', port: t.rx.controlPort, fingerprint: t.rx.fingerprint, dataPort: t.rx.dataPort };
  credential = (await t.control().register({ sourceId: 'dl', code: t.code })).credential;
  await new ControlClient(target, { sourceId: 'dl', credential }).beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: 1 << 20 }] });
});
after(async () => { await t.close(); });

function recorder() {
  const seen: { acks: (number | undefined)[]; errors: RemoteError[]; lost: DataLink[] } = { acks: [], errors: [], lost: [] };
  let wake = () => {};
  const events: DataLinkEvents = {
    ack: (seq) => { seen.acks.push(seq); wake(); },
    remoteError: (e) => { seen.errors.push(e); wake(); },
    lost: (link) => { seen.lost.push(link); wake(); },
  };
  const until = async (cond: () => boolean) => { while (!cond()) await new Promise<void>((r) => { wake = r; }); };
  return { seen, events, until };
}

const hello = (over: Partial<HelloFrame> = {}): HelloFrame => ({ sourceId: 'dl', credential, cycleId: 'c1', streamId: 'abc123', wireVersion: WIRE_VERSION, ...over });
const marker = (seq: number, offset: number) => encodeExtentHeader({ codec: CODEC.ZERO, seq, disk: 0, offset, length: 4096, digest: Buffer.alloc(32) }, 0);

test('a new stream is READY with nothing durable; a SYNC brings the ACK of what was written; the end is reported', async () => {
  const r = recorder();
  const link = await DataLink.open(target, hello(), r.events);
  assert.equal(link.durableSeq, null);
  assert.ok(link.silentMs() < 5000);
  assert.equal(link.write(marker(1, 0)), true);
  link.write(marker(2, 4096));
  link.sync(1);
  await r.until(() => r.seen.acks.includes(2));
  link.destroy();
  await r.until(() => r.seen.lost.length === 1);
  assert.equal(r.seen.lost[0], link);
  assert.deepEqual(r.seen.errors, []);
});

test('the same stream again: READY says what is durable', async () => {
  const r = recorder();
  const link = await DataLink.open(target, hello(), r.events);
  assert.equal(link.durableSeq, 2);
  link.end();
  await r.until(() => r.seen.lost.length === 1);
});

test('a refused HELLO rejects the open with the receiver\'s error', async () => {
  const r = recorder();
  await assert.rejects(DataLink.open(target, hello({ credential: 'wrong' }), r.events), (e: unknown) => e instanceof RemoteError && e.code === 'AUTH');
  assert.equal(r.seen.errors[0]?.code, 'AUTH');
  await assert.rejects(DataLink.open(target, hello({ cycleId: 'nope' }), recorder().events), (e: unknown) => e instanceof RemoteError && e.code === 'CYCLE_NOT_OPEN');
  assert.deepEqual(r.seen.lost, [], 'no loss is reported for a link that never opened');
});

test('a frame the receiver refuses comes back as an ERROR, then the connection ends', async () => {
  const r = recorder();
  const link = await DataLink.open(target, hello({ streamId: 'def456' }), r.events);
  link.write(encodeExtentHeader({ codec: CODEC.ZERO, seq: 1, disk: 7, offset: 0, length: 4096, digest: Buffer.alloc(32) }, 0));
  await r.until(() => r.seen.lost.length === 1);
  assert.equal(r.seen.errors[0]?.code, 'BAD_DISK');
});
