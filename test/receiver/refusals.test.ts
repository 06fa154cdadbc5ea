/**
 * Every refusal of the receiver: the peer gets a clear error, a log line is written, another source's
 * concurrent cycle goes on undisturbed, and nothing of the refused source becomes an image.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { startTestReceiver, makeDisk, sha256, readDisk, type TestRx } from '../transfer/helpers.ts';
import { ControlClient, RemoteError } from '../../src/transfer/control-client.ts';
import { connectPinned } from '../../src/transfer/connect.ts';
import { CODEC, FRAME, FrameAssembler, encodeExtentHeader, encodeJsonFrame, parseJsonBody } from '../../src/transfer/protocol.ts';
import { createCode } from '../../src/receiver/identity.ts';
import { compress } from 'zstd-napi';
import type { CycleSession, Sender } from '../../src/transfer/sender.ts';
import { WIRE_VERSION } from '../../src/transfer/wire-version.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';

const MiB = 1 << 20;
let t: TestRx;
let victimStop = false;
let victim: { sender: Sender; cycle: CycleSession; data: Buffer; sending: Promise<void> };

before(async () => {
  t = await startTestReceiver();
  // another source keeps a cycle running (slowly) through every refusal below
  const data = makeDisk(12 * MiB, 5);
  const sender = await t.sender('victim', { compression: 1 });
  const cycle = await sender.beginCycle({ cycleId: 'v1', disks: [{ disk: 0, capacity: data.length }] });
  // it keeps sending (the same bytes, round after round) until every refusal test is done
  const sending = (async () => {
    do {
      for (let off = 0; off < data.length; off += 256 * 1024) {
        await cycle.send(0, off, data.subarray(off, off + 256 * 1024));
        await new Promise((r) => setTimeout(r, 20));
      }
    } while (!victimStop);
  })();
  victim = { sender, cycle, data, sending };
});

after(async () => {
  // the victim finishes, bit-identical, after all the refusals
  victimStop = true;
  await victim.sending;
  const img = await victim.cycle.commit();
  assert.equal(sha256(await readDisk(t.rx, 'victim', img.imageId, 0, victim.data.length)), sha256(victim.data));
  assert.equal(victim.cycle.stats().reconnects, 0, 'the victim never lost its connection');
  await victim.sender.close();
  const logText = t.log.text();
  assert.ok(!logText.includes(t.code), 'the activation code never appears in the log');
  for (const f of (await readdir(t.dir)).filter((n) => n.endsWith('.cred'))) {
    const cred = JSON.parse(await readFile(join(t.dir, f), 'utf8')) as { credential: string };
    assert.ok(!logText.includes(cred.credential), 'no credential appears in the log');
  }
  await t.close();
});

async function register(sourceId: string, code = t.code): Promise<string> {
  return (await t.control().request<{ credential: string }>('POST', '/v1/register', { sourceId, code })).credential;
}
function authed(sourceId: string, credential: string): ControlClient {
  return new ControlClient({ host: '127.0.0.1', port: t.rx.controlPort, fingerprint: t.rx.fingerprint }, { sourceId, credential });
}
async function noImages(sourceId: string): Promise<void> {
  const srcs = await t.rx.store.listSources();
  if (srcs.includes(sourceId)) assert.deepEqual(await t.rx.store.listImages(sourceId), [], `no image of ${sourceId}`);
}
function loggedRefusal(errCode: string): void {
  assert.ok(t.log.lines.some((l) => l.level === 40 && l.errCode === errCode), `a warn log line with errCode ${errCode}`);
}
async function expectRemote(p: Promise<unknown>, code: string, msg: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof RemoteError, `RemoteError expected, got ${String(e)}`);
    assert.equal(e.code, code);
    assert.match(e.message, msg);
    return true;
  });
}

/** A hand-made data connection: HELLO, then whatever frames the test writes; resolves the receiver's ERROR. */
async function rawData(sourceId: string, credential: string, cycleId: string, wireVersion: number | null = WIRE_VERSION): Promise<{ s: TLSSocket; frames: { type: number; msg?: Record<string, unknown> }[]; closed: Promise<void> }> {
  const s = await connectPinned({ host: '127.0.0.1', port: t.rx.dataPort, fingerprint: t.rx.fingerprint });
  const frames: { type: number; msg?: Record<string, unknown> }[] = [];
  const reader = new FrameAssembler();
  s.on('data', (c: Buffer) => { reader.push(c); for (let f = reader.next(); f; f = reader.next()) frames.push({ type: f.type, msg: parseJsonBody(f.body) }); });
  const closed = new Promise<void>((r) => { s.on('close', () => r()); s.on('error', () => undefined); });
  s.write(encodeJsonFrame(FRAME.HELLO, { sourceId, credential, cycleId, streamId: 'abc123', wireVersion }));
  return { s, frames, closed };
}
function errorOf(frames: { type: number; msg?: Record<string, unknown> }[]): Record<string, unknown> {
  const e = frames.find((f) => f.type === FRAME.ERROR);
  assert.ok(e, `an ERROR frame, got types ${frames.map((f) => f.type).join(',')}`);
  return e.msg!;
}
function extent(seq: number, disk: number, offset: number, data: Buffer, opts: { codec?: number; digest?: Buffer; length?: number } = {}): Buffer {
  const digest = opts.digest ?? treeDigest(data);
  return Buffer.concat([encodeExtentHeader({ codec: opts.codec ?? CODEC.RAW, seq, disk, offset, length: opts.length ?? data.length, digest }, data.length), data]);
}
async function openCycle(sourceId: string, cycleId = 'c1', capacity = 4 * MiB): Promise<string> {
  const cred = await register(sourceId);
  await authed(sourceId, cred).request('POST', '/v1/cycles', { cycleId, disks: [{ disk: 0, capacity }] });
  return cred;
}

test('missing credential on the control API', async () => {
  await expectRemote(t.control().request('GET', '/v1/images'), 'AUTH', /missing credential/);
  const c = new ControlClient({ host: '127.0.0.1', port: t.rx.controlPort, fingerprint: t.rx.fingerprint }, { sourceId: 'victim', credential: '' });
  await expectRemote(c.request('POST', '/v1/cycles', { cycleId: 'x', disks: [{ disk: 0, capacity: MiB }] }), 'AUTH', /missing credential for source victim/);
  loggedRefusal('AUTH');
  await noImages('victim-x');
});

test('wrong credential on the control API and on the data port', async () => {
  await register('wc-a');
  await expectRemote(authed('wc-a', 'not-the-credential').request('GET', '/v1/images'), 'AUTH', /wrong credential for source wc-a/);
  // through the Sender: a credential file with a wrong credential
  await writeFile(join(t.dir, 'wc-a.cred'), JSON.stringify({ sourceId: 'wc-a', credential: 'forged' }));
  await expectRemote(t.sender('wc-a'), 'AUTH', /wrong credential/);
  // data port: the victim's cycle id with a forged credential must not touch it
  const { frames, closed } = await rawData('victim', 'forged', 'v1');
  await closed;
  assert.equal(errorOf(frames).code, 'AUTH');
  assert.match(String(errorOf(frames).message), /missing or wrong credential for source victim/);
  loggedRefusal('AUTH');
  await noImages('wc-a');
});

test('expired and used-up activation codes', async () => {
  const c = await createCode(join(t.dir, 'rx'), 1, 1);
  await register('code-a', c.code);
  await expectRemote(register('code-b', c.code), 'CODE_USED_UP', /registered its quota of 1 sources/);
  const e = await createCode(join(t.dir, 'rx'), 5, 1);
  // age the code on disk: validity is at least one day, so the test moves its expiry into the past
  const dir = join(t.dir, 'rx', 'codes');
  for (const f of await readdir(dir)) {
    const p = join(dir, f);
    const j = JSON.parse(await readFile(p, 'utf8')) as { code: string; expiresAt: string };
    if (j.code === e.code) await writeFile(p, JSON.stringify({ ...j, expiresAt: new Date(Date.now() - 1000).toISOString() }));
  }
  await expectRemote(register('code-c', e.code), 'CODE_EXPIRED', /activation code expired at/);
  await expectRemote(register('code-d', 'VML-NOPE'), 'CODE_UNKNOWN', /not known/);
  loggedRefusal('CODE_USED_UP');
  loggedRefusal('CODE_EXPIRED');
  for (const s of ['code-b', 'code-c', 'code-d']) await noImages(s);
});

test('ids outside [a-z0-9-]', async () => {
  await expectRemote(t.control().request('POST', '/v1/register', { sourceId: '../etc', code: t.code }), 'BAD_ID', /invalid source id "..\/etc"/);
  const cred = await register('id-a');
  await expectRemote(authed('id-a', cred).request('POST', '/v1/cycles', { cycleId: 'Cycle_1', disks: [{ disk: 0, capacity: MiB }] }), 'BAD_ID', /invalid cycle id "Cycle_1"/);
  await expectRemote(authed('id-a', cred).request('GET', '/v1/images/..%2f1/digests?disk=0&blockSize=4096'), 'BAD_ID', /invalid image id/);
  const { frames, closed } = await rawData('ID-A', cred, 'c1');
  await closed;
  assert.equal(errorOf(frames).code, 'BAD_ID');
  loggedRefusal('BAD_ID');
  await noImages('id-a');
});

test('frames with a wrong length', async () => {
  const cred = await openCycle('len-a');
  // a raw extent whose header says 8192 bytes but carries 4096
  let r = await rawData('len-a', cred, 'c1');
  r.s.write(extent(1, 0, 0, Buffer.alloc(4096, 1), { length: 8192 }));
  await r.closed;
  assert.equal(errorOf(r.frames).code, 'BAD_LENGTH');
  assert.match(String(errorOf(r.frames).message), /raw extent says 8192 bytes but carries 4096/);
  // a compressed extent that inflates to another length than its header says
  r = await rawData('len-a', cred, 'c1');
  const plain = Buffer.alloc(8192, 5);
  r.s.write(extent(1, 0, 0, compress(plain), { codec: CODEC.ZSTD, length: 4096, digest: treeDigest(plain) }));
  await r.closed;
  assert.equal(errorOf(r.frames).code, 'BAD_LENGTH');
  assert.match(String(errorOf(r.frames).message), /compressed extent declares 8192 bytes, frame header says 4096/);
  // a frame length beyond the maximum
  r = await rawData('len-a', cred, 'c1');
  const huge = Buffer.alloc(5); huge.writeUInt32BE(0x7fffffff, 0); huge[4] = FRAME.EXTENT;
  r.s.write(huge);
  await r.closed;
  assert.equal(errorOf(r.frames).code, 'BAD_FRAME_LENGTH');
  loggedRefusal('BAD_LENGTH');
  loggedRefusal('BAD_FRAME_LENGTH');
  await expectRemote(authed('len-a', cred).request('POST', '/v1/cycles/c1/commit', { expected: [{ disk: 0, ranges: [{ offset: 0, length: 8192 }] }] }),
    'MISSING_EXTENTS', /refused/);
  await noImages('len-a');
});

test('frames with a wrong digest', async () => {
  const cred = await openCycle('dig-a');
  const r = await rawData('dig-a', cred, 'c1');
  const good = Buffer.alloc(65536, 7);
  r.s.write(extent(1, 0, 0, good));
  r.s.write(extent(2, 0, 65536, good, { digest: createHash('sha256').update('something else').digest() }));
  await r.closed;
  assert.equal(errorOf(r.frames).code, 'BAD_DIGEST');
  assert.match(String(errorOf(r.frames).message), /extent digest mismatch/);
  loggedRefusal('BAD_DIGEST');
  const held = (await authed('dig-a', cred).request<{ held: { ranges: { offset: number; length: number }[] }[] }>('GET', '/v1/cycles/c1/held')).held;
  assert.ok(!held.some((h) => h.ranges.some((x) => x.offset + x.length > 65536)), 'the bad extent was not applied');
  await noImages('dig-a');
});

test('a whole-chunk extent with a wrong digest (checked as the store appends it) is refused BAD_DIGEST; what came before it stays held after a flush', async () => {
  const cred = await openCycle('dig-b');
  const r = await rawData('dig-b', cred, 'c1');
  const good = randomBytes(MiB);
  const other = randomBytes(MiB);
  r.s.write(extent(1, 0, 0, good));
  r.s.write(encodeJsonFrame(FRAME.SYNC, { token: 1 }));
  r.s.write(extent(2, 0, MiB, other, { digest: treeDigest(good) }));
  await r.closed;
  assert.equal(errorOf(r.frames).code, 'BAD_DIGEST');
  assert.match(String(errorOf(r.frames).message), /extent digest mismatch/);
  const held = (await authed('dig-b', cred).request<{ held: { ranges: { offset: number; length: number }[] }[] }>('GET', '/v1/cycles/c1/held')).held;
  assert.deepEqual(held[0]!.ranges, [{ offset: 0, length: MiB }], 'the good extent is held, the bad one not');
  await noImages('dig-b');
});

test('a sender of wire version 1 (plain SHA-256 extent digests) is refused on the data port and when it begins a cycle', async () => {
  const cred = await openCycle('wire-a');
  // its HELLO declares no version (null: as absent)
  const r = await rawData('wire-a', cred, 'c1', null);
  const data = Buffer.alloc(65536, 9);
  r.s.write(Buffer.concat([encodeExtentHeader({ codec: CODEC.RAW, seq: 1, disk: 0, offset: 0, length: data.length, digest: createHash('sha256').update(data).digest() }, data.length), data]));
  await r.closed;
  const e = errorOf(r.frames);
  assert.equal(e.code, 'WIRE_VERSION');
  assert.match(String(e.message), /receiver speaks wire version 2, the sender wire version 1/);
  assert.match(String(e.fix), /upgrade the agent or connector/);
  loggedRefusal('WIRE_VERSION');
  assert.deepEqual((await authed('wire-a', cred).request<{ held: { ranges: unknown[] }[] }>('GET', '/v1/cycles/c1/held')).held.flatMap((h) => h.ranges), [], 'nothing of it was written');
  // a version from the future names the other fix
  const r2 = await rawData('wire-a', cred, 'c1', 3);
  await r2.closed;
  assert.match(String(errorOf(r2.frames).fix), /upgrade the receiver/);

  // its begin-cycle request carries no version header: refused before anything is read
  const s = await connectPinned({ host: '127.0.0.1', port: t.rx.controlPort, fingerprint: t.rx.fingerprint });
  const body = JSON.stringify({ cycleId: 'c2', disks: [{ disk: 0, capacity: MiB }] });
  let answer = '';
  s.setEncoding('utf8').on('data', (d: string) => { answer += d; });
  const ended = new Promise<void>((res) => s.on('close', () => res()));
  s.end(`POST /v1/cycles HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nx-vmlift-source: wire-a\r\nauthorization: Bearer ${cred}\r\n\r\n${body}`);
  await ended;
  assert.match(answer, /^HTTP\/1\.1 409/);
  const err = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as { error: { code: string; message: string; fix: string } };
  assert.equal(err.error.code, 'WIRE_VERSION');
  assert.match(err.error.message, /wire version 2, the sender wire version 1/);
  await noImages('wire-a');
  // and whoami tells a sender which version the receiver speaks
  assert.equal((await authed('wire-a', cred).whoami()).wireVersion, WIRE_VERSION);
});

test('offsets beyond the disk', async () => {
  const cred = await openCycle('oob-a', 'c1', MiB);
  const r = await rawData('oob-a', cred, 'c1');
  r.s.write(extent(1, 0, MiB - 4096, Buffer.alloc(8192, 3)));
  await r.closed;
  assert.equal(errorOf(r.frames).code, 'OUT_OF_RANGE');
  assert.match(String(errorOf(r.frames).message), /beyond disk 0 \(capacity 1048576\)/);
  const r2 = await rawData('oob-a', cred, 'c1');
  r2.s.write(extent(1, 3, 0, Buffer.alloc(512, 3)));
  await r2.closed;
  assert.equal(errorOf(r2.frames).code, 'BAD_DISK');
  loggedRefusal('OUT_OF_RANGE');
  // the Sender refuses it before it leaves
  const s = await t.sender('oob-b');
  const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: MiB }] });
  await assert.rejects(c.send(0, MiB, Buffer.alloc(512)), /outside disk 0/);
  await c.abort();
  await s.close();
  await noImages('oob-a');
  await noImages('oob-b');
});

test('commit with missing extents; abort leaves no image', async () => {
  const s = await t.sender('miss-a');
  const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: 4 * MiB }] });
  await c.send(0, 0, Buffer.alloc(MiB, 9));
  await c.send(0, 2 * MiB, Buffer.alloc(MiB, 8));
  // the sender claims the whole disk: the receiver holds only 2 MiB of it
  const cred = JSON.parse(await readFile(join(t.dir, 'miss-a.cred'), 'utf8')) as { credential: string };
  const ctl = authed('miss-a', cred.credential);
  await new Promise((r) => setTimeout(r, 700)); // let the receiver flush
  await expectRemote(ctl.request('POST', '/v1/cycles/c1/commit', { expected: [{ disk: 0, ranges: [{ offset: 0, length: 4 * MiB }] }] }),
    'MISSING_EXTENTS', /commit of cycle c1 refused/);
  loggedRefusal('MISSING_EXTENTS');
  await noImages('miss-a');
  await c.abort();
  await noImages('miss-a');
  assert.deepEqual(await t.rx.store.openCycles('miss-a'), []);
  await s.close();
});
