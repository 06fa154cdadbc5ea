/** Agent-side bad input: a clear error naming the cause and the fix, a non-zero exit, nothing committed. */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImageStore } from '../../src/store/index.ts';
import { Receiver, runAgent, vmlift, writeCodeFile, freePort, killChildren } from './harness.ts';

let dir: string;
let recv: Receiver;
let disk: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmlift-agent-errors-'));
  recv = await Receiver.start(join(dir, 'recv'));
  disk = join(dir, 'disk.img');
  await writeFile(disk, Buffer.alloc(1024 * 1024, 7));
});

after(async () => {
  await recv?.stop();
  await killChildren();
  await rm(dir, { recursive: true, force: true });
});

function errorLines(stderr: string): { message: string; fix: string } {
  const m = /vmlift: error: (.*)\n\s+fix: (.*)/.exec(stderr);
  assert.ok(m, `an error and a fix on stderr: ${stderr}`);
  return { message: m[1]!, fix: m[2]! };
}

test('missing device', async () => {
  const r = await runAgent({ devices: [join(dir, 'nope.img')], receiver: recv, stateDir: join(dir, 's1'), codeFile: await writeCodeFile(join(dir, 'c1'), recv.code), sourceId: 'e1' });
  assert.notEqual(r.exit, 0);
  const e = errorLines(r.stderr);
  assert.match(e.message, /nope\.img does not exist/);
  assert.match(e.fix, /--device/);
});

test('wrong fingerprint: refused before anything is sent', async () => {
  const wrong = 'AB:'.repeat(31) + 'AB';
  const r = await runAgent({ devices: [disk], receiver: recv, stateDir: join(dir, 's2'), codeFile: await writeCodeFile(join(dir, 'c2'), recv.code), sourceId: 'e2', fingerprint: wrong });
  assert.notEqual(r.exit, 0);
  const e = errorLines(r.stderr);
  assert.match(e.message, /fingerprint/);
  assert.match(e.fix, /receiver info/);
  const malformed = await runAgent({ devices: [disk], receiver: recv, stateDir: join(dir, 's2b'), codeFile: join(dir, 'c2'), sourceId: 'e2', fingerprint: 'xyz' });
  assert.notEqual(malformed.exit, 0);
  assert.match(errorLines(malformed.stderr).message, /not a SHA-256 certificate fingerprint/);
});

test('bad activation code', async () => {
  const r = await runAgent({ devices: [disk], receiver: recv, stateDir: join(dir, 's3'), codeFile: await writeCodeFile(join(dir, 'c3'), 'WRONG-CODE-1234'), sourceId: 'e3' });
  assert.notEqual(r.exit, 0);
  const e = errorLines(r.stderr);
  assert.match(e.message, /code/i);
  assert.ok(e.fix.length > 0);
  const store = await openImageStore(join(dir, 'recv', 'store'));
  try {
    assert.deepEqual(await store.listImages('e3').catch(() => []), [], 'nothing committed');
  } finally {
    await store.close();
  }
});

test('no activation code and no credential; receiver not reachable', async () => {
  const r = await vmlift(['agent', 'sync', '--device', disk, '--receiver', recv.address, '--fingerprint', recv.fingerprint,
    '--state-dir', join(dir, 's4'), '--source-id', 'e4', '--once'], { VMLIFT_ACTIVATION_CODE: '', VMLIFT_CODE: '' });
  assert.notEqual(r.code, 0);
  assert.match(errorLines(r.stderr).message, /no credential|activation code/);
  const port = await freePort();
  const u = await vmlift(['agent', 'sync', '--device', disk, '--receiver', `127.0.0.1:${port}`, '--fingerprint', recv.fingerprint,
    '--state-dir', join(dir, 's5'), '--source-id', 'e5', '--once', '--retry-for', '1s', '--code-file', join(dir, 'c1')]);
  assert.notEqual(u.code, 0);
  assert.match(u.stderr, /cannot connect to receiver|unreachable/i);
});

test('bad settings are refused with their range', async () => {
  const base = ['agent', 'sync', '--device', disk, '--receiver', recv.address, '--fingerprint', recv.fingerprint, '--state-dir', join(dir, 's6')];
  for (const [flags, re] of [
    [['--interval', '30m'], /1h to 7d/],
    [['--interval', '8d'], /1h to 7d/],
    [['--once', '--compression', '11'], /compression level must be a whole number from 0 to 10/],
    [['--once', '--max-images', '0'], /max kept images must be a whole number from 1 to 10/],
    [['--once', '--source-id', 'Bad_Id'], /invalid source id/],
    [[], /--once|--interval/],
  ] as [string[], RegExp][]) {
    const r = await vmlift([...base, ...flags]);
    assert.notEqual(r.code, 0, flags.join(' '));
    assert.match(errorLines(r.stderr).message, re, flags.join(' '));
  }
});
