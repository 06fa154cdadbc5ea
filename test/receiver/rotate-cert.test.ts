/**
 * Issue 12 §5, certificate rotation end to end: `vmlift receiver rotate-cert` makes a new key, the
 * restarted receiver serves it, an agent pinned to the old fingerprint stops with FINGERPRINT_MISMATCH
 * naming the new fingerprint and the flag that accepts it — and sends nothing —, the connector's sender
 * names `vmlift connector set --fingerprint`, which changes the pin; with the new pin the same source
 * (same credential) syncs on.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Receiver, runAgent, writeCodeFile, vmlift, killChildren } from '../agent/harness.ts';
import { Sender } from '../../src/transfer/sender.ts';
import { acceptPinCommand } from '../../src/cli/wiring.ts';
import { UserError } from '../../src/util/errors.ts';
import { loadOrCreateTls } from '../../src/receiver/identity.ts';

const dirs: string[] = [];
after(async () => { await killChildren(); for (const d of dirs) await rm(d, { recursive: true, force: true }); });

const MiB = 1 << 20;

async function images(dataDir: string): Promise<string[]> {
  const r = await vmlift(['image', 'ls', '--data-dir', dataDir, '--source', 'rot-a', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const v = JSON.parse(r.stdout) as { images: { imageId: string }[]; openCycles: unknown[] };
  assert.deepEqual(v.openCycles, [], 'no cycle left open');
  return v.images.map((i) => i.imageId);
}

test('rotate-cert: old pins fail loudly with the new fingerprint and the command to accept it; accepted, the source syncs on', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-rotate-'));
  dirs.push(dir);
  const dataDir = join(dir, 'rx');
  const rx = await Receiver.start(dataDir);
  const oldFp = rx.fingerprint;
  const device = join(dir, 'disk.img');
  const data = Buffer.alloc(4 * MiB);
  for (let i = 0; i < data.length; i += 4096) data.write(`block ${i} `.repeat(8), i);
  await writeFile(device, data);
  const codeFile = await writeCodeFile(join(dir, 'code'), rx.code);
  const stateDir = join(dir, 'agent');
  const agent = (fingerprint: string) => runAgent({ devices: [device], receiver: rx, stateDir, codeFile, sourceId: 'rot-a', fingerprint, extra: ['--checksum'] });
  const first = await agent(oldFp);
  assert.equal(first.exit, 0, first.stderr);
  const keyBefore = await readFile(join(dataDir, 'tls', 'key.pem'), 'utf8');

  const rot = await vmlift(['receiver', 'rotate-cert', '--data-dir', dataDir, '--json']);
  assert.equal(rot.code, 0, rot.stderr);
  const r = JSON.parse(rot.stdout) as { previousFingerprint: string; fingerprint: string; retiredCert: string };
  assert.equal(r.previousFingerprint, oldFp);
  assert.match(r.fingerprint, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  assert.notEqual(r.fingerprint, oldFp);
  const keyAfter = await readFile(join(dataDir, 'tls', 'key.pem'), 'utf8');
  assert.notEqual(keyAfter, keyBefore, 'a new key');
  assert.equal((await stat(join(dataDir, 'tls', 'key.pem'))).mode & 0o077, 0, 'the new key is private');
  assert.deepEqual(await readdir(join(dataDir, 'tls', 'retired')), [r.retiredCert.split('/').pop()], 'the old certificate is kept, its key is not');
  assert.ok(!(await readFile(r.retiredCert, 'utf8')).includes('PRIVATE KEY'));
  const [text, infoRun] = await Promise.all([vmlift(['receiver', 'rotate-cert', '--data-dir', join(dir, 'nothing')]),
    vmlift(['receiver', 'info', '--data-dir', dataDir, '--json'])]);
  assert.notEqual(text.code, 0);
  assert.match(text.stderr, /holds no receiver/);
  assert.equal((JSON.parse(infoRun.stdout) as { fingerprint: string }).fingerprint, r.fingerprint);

  // the receiver uses the new certificate once restarted
  await rx.stop();
  await rx.spawn();
  const before = await images(dataDir);
  assert.equal(before.length, 1);
  data.write('changed after the rotation', 0);
  await writeFile(device, data);
  const refused = await agent(oldFp);
  assert.notEqual(refused.exit, 0, 'an old pin never proceeds');
  const err = refused.lines.find((l) => l.error) as { error: { code: string; message: string; fix: string } } | undefined;
  assert.ok(err, `a JSON error line: ${JSON.stringify(refused.lines)} ${refused.stderr}`);
  assert.equal(err.error.code, 'FINGERPRINT_MISMATCH');
  assert.ok(err.error.message.includes(`presented certificate fingerprint ${r.fingerprint}`), err.error.message);
  assert.ok(err.error.message.includes(`but ${oldFp} is pinned`), err.error.message);
  assert.ok(err.error.fix.includes(`--fingerprint ${r.fingerprint}`), err.error.fix);
  assert.match(err.error.fix, /rotate-cert[\s\S]*do not accept it/);
  assert.deepEqual(await images(dataDir), before, 'no image from the refused run');
  assert.ok(!/cycle begun|source registered/.test(rx.stderr.slice(rx.stderr.lastIndexOf('listening'))), 'nothing reached the receiver');

  const connectorPart = (async () => {
    // the connector's sender names the connector's command
    const home = join(dir, 'home');
    await assert.rejects(Sender.connect({
      receiver: rx.address, fingerprint: oldFp, credentialFile: join(home, 'credentials', 'rot-b.json'), activationCode: rx.code, sourceId: 'rot-b',
      compression: 0, bandwidthMbps: 0, checksum: false, acceptPin: acceptPinCommand(home),
    }), (e: unknown) => e instanceof UserError && e.code === 'FINGERPRINT_MISMATCH'
      && (e.fix ?? '').includes(`\`vmlift connector set --home ${home} --fingerprint ${r.fingerprint}\`, then restart the connector`));
    await assert.rejects(readFile(join(home, 'credentials', 'rot-b.json')), 'nothing registered through an old pin');
    // ... and that command changes the pin in the connector's config
    const pw = join(dir, 'pw');
    await writeFile(pw, 'x\n');
    const init = await vmlift(['connector', 'init', '--home', home, '--server', 'https://127.0.0.1:1/sdk', '--user', 'u', '--password-file', pw, '--insecure',
      '--receiver', rx.address, '--fingerprint', oldFp, '--code-file', codeFile, '--json']);
    assert.equal(init.code, 0, init.stderr);
    const set = await vmlift(['connector', 'set', '--home', home, '--fingerprint', r.fingerprint.replace(/:/g, '').toLowerCase(), '--json']);
    assert.equal(set.code, 0, set.stderr);
    assert.deepEqual(JSON.parse(set.stdout), { home, previousFingerprint: oldFp, fingerprint: r.fingerprint });
    assert.equal(JSON.parse(await readFile(join(home, 'config.json'), 'utf8')).receiver.fingerprint, r.fingerprint);
    const bad = await vmlift(['connector', 'set', '--home', home, '--fingerprint', 'AB:CD']);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /not a SHA-256 certificate fingerprint/);
  })();
  // accepted: the same source and credential sync on
  const [after] = await Promise.all([agent(r.fingerprint), connectorPart]);
  assert.equal(after.exit, 0, after.stderr);
  assert.equal(after.report?.baseImageId, before[0], 'an incremental on the image made before the rotation');
  assert.ok((after.report?.disks[0]?.changedBytes ?? 0) > 0, 'the block changed after the rotation was sent');
  const now = await images(dataDir);
  assert.equal(now.length, 2);
  // --checksum: the receiver re-read the staged image against this whole-disk SHA-256 before publishing it
  assert.equal(after.report?.imageId, now[1]);
  assert.equal(after.report?.disks[0]?.sha256, createHash('sha256').update(data).digest('hex'));
  await rx.stop();
});

test('a rotation cut short between key and certificate: the receiver refuses to start, a new rotate-cert repairs it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-rotate-'));
  dirs.push(dir);
  const a = (await loadOrCreateTls(join(dir, 'a'))).tls;
  await loadOrCreateTls(join(dir, 'b'));
  // the state a crash after the key write leaves: another key beside the old certificate
  await writeFile(join(dir, 'a', 'tls', 'key.pem'), await readFile(join(dir, 'b', 'tls', 'key.pem')));
  await assert.rejects(loadOrCreateTls(join(dir, 'a')), (e: unknown) => e instanceof UserError && e.code === 'TLS_KEY_MISMATCH'
    && /rotation was cut short/.test(e.message) && (e.fix ?? '').includes(`vmlift receiver rotate-cert --data-dir ${join(dir, 'a')}`));
  const info = await vmlift(['receiver', 'info', '--data-dir', join(dir, 'a')]);
  assert.notEqual(info.code, 0);
  assert.match(info.stderr, /TLS_KEY_MISMATCH|rotation was cut short/);
  const rot = await vmlift(['receiver', 'rotate-cert', '--data-dir', join(dir, 'a'), '--json']);
  assert.equal(rot.code, 0, rot.stderr);
  const r = JSON.parse(rot.stdout) as { previousFingerprint: string; fingerprint: string };
  assert.equal(r.previousFingerprint.replace(/:/g, '').toLowerCase(), a.fingerprint);
  assert.ok(r.fingerprint);
  const now = (await loadOrCreateTls(join(dir, 'a'))).tls;
  assert.equal(now.fingerprint, r.fingerprint.replace(/:/g, '').toLowerCase());
  assert.notEqual(now.fingerprint, a.fingerprint);
});
