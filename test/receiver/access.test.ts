/**
 * Issue 12 §5, the receiver's side of access: over real TLS (control API and data port), the receiver
 * refuses a credential of another source, a replayed HELLO of a stream whose cycle closed, an expired
 * or used-up activation code, and a source id that differs from a registered one only in case or
 * Unicode form. Each refusal is a coded error naming cause and fix, and writes nothing: no source
 * record, no code use, no cycle, no image, no held range.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestReceiver, sha256, readDisk, type TestRx } from '../transfer/helpers.ts';
import { ControlClient, RemoteError } from '../../src/transfer/control-client.ts';
import { connectPinned } from '../../src/transfer/connect.ts';
import { CODEC, FRAME, FrameAssembler, encodeExtentHeader, encodeJsonFrame, parseJsonBody } from '../../src/transfer/protocol.ts';
import { createCode, listCodes } from '../../src/receiver/identity.ts';
import { WIRE_VERSION } from '../../src/transfer/wire-version.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';

const MiB = 1 << 20;
let t: TestRx;
let rxDir: string;

before(async () => {
  t = await startTestReceiver();
  rxDir = join(t.dir, 'rx');
});
after(async () => { await t.close(); });

async function register(sourceId: string, code = t.code): Promise<string> {
  return (await t.control().request<{ credential: string }>('POST', '/v1/register', { sourceId, code })).credential;
}
function authed(sourceId: string, credential: string): ControlClient {
  return new ControlClient({ host: '127.0.0.1', port: t.rx.controlPort, fingerprint: t.rx.fingerprint }, { sourceId, credential });
}
async function expectRemote(p: Promise<unknown>, code: string, msg: RegExp, fix: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof RemoteError, `RemoteError expected, got ${String(e)}`);
    assert.equal(e.code, code);
    assert.match(e.message, msg);
    assert.match(e.fix ?? '', fix, `the fix of ${code}`);
    return true;
  });
}

/** What a refusal must leave as it was: source records, codes (with their use counts), cycles and images. */
async function admissionState(): Promise<string> {
  const files: string[] = [];
  for (const sub of ['sources', 'codes']) {
    for (const n of (await readdir(join(rxDir, sub)).catch(() => [])).sort()) files.push(`${sub}/${n}:${sha256(await readFile(join(rxDir, sub, n)))}`);
  }
  const store: string[] = [];
  for (const s of (await t.rx.store.listSources()).sort()) {
    store.push(`${s}:${(await t.rx.store.listImages(s)).map((i) => i.imageId).join(',')}:${(await t.rx.store.openCycles(s)).join(',')}`);
  }
  return JSON.stringify({ files, store });
}

interface Frame { type: number; msg?: Record<string, unknown> }
/** A hand-made data connection writing `bytes`; resolves every frame the receiver sent once it closed (or `until` held). */
async function rawData(bytes: Buffer, until?: (f: Frame[]) => boolean): Promise<{ frames: Frame[]; end(): Promise<void> }> {
  const s = await connectPinned({ host: '127.0.0.1', port: t.rx.dataPort, fingerprint: t.rx.fingerprint });
  const frames: Frame[] = [];
  const reader = new FrameAssembler();
  let wake = () => {};
  const closed = new Promise<void>((r) => { s.on('close', () => { r(); wake(); }); s.on('error', () => undefined); });
  s.on('data', (c: Buffer) => { reader.push(c); for (let f = reader.next(); f; f = reader.next()) frames.push({ type: f.type, msg: parseJsonBody(f.body) }); wake(); });
  s.write(bytes);
  await new Promise<void>((r) => {
    wake = () => { if (s.destroyed || s.closed || until?.(frames)) r(); };
    setTimeout(r, 10_000);
  });
  return { frames, end: async () => { s.end(); await closed; } };
}
function errorOf(frames: Frame[]): Record<string, unknown> {
  const e = frames.find((f) => f.type === FRAME.ERROR);
  assert.ok(e, `an ERROR frame, got types ${frames.map((f) => f.type).join(',')}`);
  return e.msg!;
}
function hello(sourceId: string, credential: string, cycleId: string, streamId: string): Buffer {
  return encodeJsonFrame(FRAME.HELLO, { sourceId, credential, cycleId, streamId , wireVersion: WIRE_VERSION });
}
function extent(seq: number, offset: number, data: Buffer): Buffer {
  const digest = treeDigest(data);
  return Buffer.concat([encodeExtentHeader({ codec: CODEC.RAW, seq, disk: 0, offset, length: data.length, digest }, data.length), data]);
}

test('a credential of another source is refused on the control API and on the data port', async () => {
  const credA = await register('acc-a');
  await register('acc-b');
  const credB = await register('acc-b2');
  await authed('acc-a', credA).request('POST', '/v1/cycles', { cycleId: 'c1', disks: [{ disk: 0, capacity: MiB }] });
  const was = await admissionState();
  // A's credential presented as B: every route, begin included
  await expectRemote(authed('acc-b', credA).request('GET', '/v1/images'), 'AUTH', /wrong credential for source acc-b/, /credential file written when this source registered/);
  await expectRemote(authed('acc-b', credA).request('POST', '/v1/cycles', { cycleId: 'c1', disks: [{ disk: 0, capacity: MiB }] }), 'AUTH', /wrong credential for source acc-b/, /register/);
  // B's credential against A's open cycle, through the data port
  const r = await rawData(Buffer.concat([hello('acc-a', credB, 'c1', 'aa01'), extent(1, 0, Buffer.alloc(4096, 1))]));
  await r.end();
  assert.equal(errorOf(r.frames).code, 'AUTH');
  assert.match(String(errorOf(r.frames).message), /missing or wrong credential for source acc-a/);
  assert.ok(!r.frames.some((f) => f.type === FRAME.READY), 'no READY for a foreign credential');
  const held = (await authed('acc-a', credA).request<{ held: { ranges: unknown[] }[] }>('GET', '/v1/cycles/c1/held')).held;
  assert.deepEqual(held.flatMap((h) => h.ranges), [], 'nothing was written into A\'s cycle');
  assert.equal(await admissionState(), was, 'nothing written');
  assert.ok(t.log.lines.some((l) => l.level === 40 && l.errCode === 'AUTH' && l.sourceId === 'acc-b'), 'a warn line names the refused source');
});

test('a recorded HELLO (with its extents) replayed after its cycle closed is refused; the image stays as committed', async () => {
  const cred = await register('rp-a');
  const ctl = authed('rp-a', cred);
  await ctl.request('POST', '/v1/cycles', { cycleId: 'c1', disks: [{ disk: 0, capacity: MiB }] });
  const first = Buffer.alloc(65536, 0x11);
  const recorded = Buffer.concat([hello('rp-a', cred, 'c1', 'beef01'), extent(1, 0, first), encodeJsonFrame(FRAME.SYNC, { token: 1 })]);
  const live = await rawData(recorded, (f) => f.some((x) => x.type === FRAME.ACK || x.type === FRAME.ERROR));
  assert.ok(live.frames.some((f) => f.type === FRAME.READY) && live.frames.some((f) => f.type === FRAME.ACK), JSON.stringify(live.frames));
  await live.end();
  const img = await ctl.request<{ imageId: string }>('POST', '/v1/cycles/c1/commit', { expected: [{ disk: 0, ranges: [{ offset: 0, length: 65536 }] }] });
  const content = sha256(await readDisk(t.rx, 'rp-a', img.imageId, 0, MiB));
  const was = await admissionState();

  // the same bytes again: same credential, cycle, stream id, extent
  const replay = await rawData(recorded);
  await replay.end();
  assert.equal(errorOf(replay.frames).code, 'CYCLE_NOT_OPEN');
  assert.match(String(errorOf(replay.frames).message), /cycle c1 of source rp-a is not open/);
  assert.ok(errorOf(replay.frames).fix, 'the refusal names a fix');
  assert.ok(!replay.frames.some((f) => f.type === FRAME.READY || f.type === FRAME.ACK));
  assert.equal(await admissionState(), was, 'nothing written by the replay');

  // with a newer cycle open the old HELLO still reaches nothing, and with a changed extent neither
  await ctl.request('POST', '/v1/cycles', { cycleId: 'c2', disks: [{ disk: 0, capacity: MiB }] });
  const forged = Buffer.concat([hello('rp-a', cred, 'c1', 'beef01'), extent(1, 0, Buffer.alloc(65536, 0x66)), encodeJsonFrame(FRAME.SYNC, { token: 2 })]);
  const again = await rawData(forged);
  await again.end();
  assert.equal(errorOf(again.frames).code, 'CYCLE_NOT_OPEN');
  const held = (await ctl.request<{ held: { ranges: unknown[] }[] }>('GET', '/v1/cycles/c2/held')).held;
  assert.deepEqual(held.flatMap((h) => h.ranges), [], 'the open cycle c2 got nothing from the replay');
  assert.deepEqual((await t.rx.store.listImages('rp-a')).map((i) => i.imageId), [img.imageId], 'no second image');
  assert.equal(sha256(await readDisk(t.rx, 'rp-a', img.imageId, 0, MiB)), content, 'the committed image is unchanged');
  await ctl.request('POST', '/v1/cycles/c2/abort', {});
});

test('an expired or used-up activation code registers nothing', async () => {
  const one = await createCode(rxDir, 1, 1);
  await register('code-ok', one.code);
  let was = await admissionState();
  await expectRemote(register('code-more', one.code), 'CODE_USED_UP', /registered its quota of 1 sources/, /vmlift receiver code --data-dir DIR --quota N/);
  assert.equal(await admissionState(), was, 'a used-up code writes nothing');
  // a code past its validity (--days 1..90): its expiry is moved into the past on disk
  const old = await createCode(rxDir, 5, 1);
  for (const f of await readdir(join(rxDir, 'codes'))) {
    const p = join(rxDir, 'codes', f);
    const j = JSON.parse(await readFile(p, 'utf8')) as { code: string; expiresAt: string };
    if (j.code === old.code) await writeFile(p, JSON.stringify({ ...j, expiresAt: new Date(Date.now() - 1000).toISOString() }));
  }
  was = await admissionState();
  await expectRemote(register('code-late', old.code), 'CODE_EXPIRED', /activation code expired at/, /vmlift receiver code --data-dir DIR/);
  // lower case and surrounding blanks name the same (expired) code: no way around the expiry
  await expectRemote(register('code-late', ` ${old.code.toLowerCase()} `), 'CODE_EXPIRED', /expired/, /receiver code/);
  assert.equal(await admissionState(), was, 'an expired code writes nothing');
  assert.equal((await listCodes(rxDir)).find((c) => c.code === old.code)!.used, 0);
  const text = t.log.text();
  assert.ok(!text.includes(one.code) && !text.includes(old.code), 'no code appears in the log');
});

test('a source id differing from a registered one only in case or Unicode form is refused everywhere', async () => {
  const cred = await register('web01');
  const was = await admissionState();
  const cases: [string, RegExp][] = [
    ['Web01', /use the source id "web01"/], // case
    ['WEB01', /use the source id "web01"/],
    ['ｗｅｂ01', /use the source id "web01"/], // fullwidth letters (NFKC folds them)
    ['web０1', /use the source id "web01"/], // a fullwidth digit
    ['wеb01', /lowercase letters, digits and '-'/], // Cyrillic е, a homoglyph NFKC keeps
    ['cafe\u0301', /lowercase letters, digits and '-'/], // NFD: e + combining acute
    ['caf\u00e9', /lowercase letters, digits and '-'/], // NFC é
  ];
  for (const [id, fix] of cases) {
    await expectRemote(t.control().request('POST', '/v1/register', { sourceId: id, code: t.code }), 'BAD_ID', /invalid source id/, fix);
    // presenting web01's credential under the look-alike id: refused before any lookup (an HTTP
    // header carries bytes: a raw client sends the UTF-8 of the id, which Node reads as latin1)
    const headerId = Buffer.from(id, 'utf8').toString('latin1');
    await expectRemote(authed(headerId, cred).request('GET', '/v1/images'), 'BAD_ID', /invalid source id/, /^[\x20-\x7e]+$/.test(id) ? fix : /source id/);
    const r = await rawData(hello(id, cred, 'c1', 'cc01'));
    await r.end();
    assert.equal(errorOf(r.frames).code, 'BAD_ID', id);
    assert.match(String(errorOf(r.frames).fix), fix);
  }
  assert.equal(await admissionState(), was, 'nothing registered or written for any look-alike');
  assert.deepEqual((await readdir(join(rxDir, 'sources'))).filter((n) => /web/i.test(n)), ['web01.json']);
});
