import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openImageStore } from '../../src/store/index.ts';
import { corruptChunk, sha, tempDir, writeAll } from './helpers.ts';

const bin = fileURLToPath(new URL('../../bin/vmlift', import.meta.url));

function vmlift(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = ''; let err = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    p.on('error', reject);
    p.on('close', (code) => resolve({ code: code ?? -1, out, err }));
  });
}

test('vmlift image ls|show|verify|export|rm: output, --json and exit codes', async (t) => {
  const dir = await tempDir(t, 'cli');
  const dataDir = join(dir, 'data');
  const store = await openImageStore(join(dataDir, 'store'), { chunkSize: 64 << 10 });
  const cap = 2 << 20;
  const v = randomBytes(cap);
  for (const c of ['c1', 'c2']) {
    const w = await store.beginCycle({ sourceId: 'web-1', cycleId: c, disks: [{ disk: 0, capacity: cap, label: 'scsi0:0' }] });
    await writeAll(w, 0, v, 64 << 10);
    await w.commit({ meta: { snapshot: `vmlift-${c}` } });
  }
  const D = ['--data-dir', dataDir];

  let r = await vmlift('image', 'ls', ...D);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /web-1\s+1\s/);
  assert.match(r.out, /dedup ratio 2\.00/);
  r = await vmlift('image', 'ls', ...D, '--source', 'web-1', '--json');
  const ls = JSON.parse(r.out) as { images: { imageId: string }[]; store: { dedupRatio: number } };
  assert.deepEqual(ls.images.map((i) => i.imageId), ['1', '2']);
  assert.equal(ls.store.dedupRatio, 2);

  r = await vmlift('image', 'show', ...D, '--source', 'web-1', '--image', '2', '--json');
  assert.equal(r.code, 0, r.err);
  const show = JSON.parse(r.out) as { baseImageId: string; meta: unknown; disks: { label: string; capacity: number }[] };
  assert.equal(show.baseImageId, '1');
  assert.deepEqual(show.meta, { snapshot: 'vmlift-c2' });
  assert.equal(show.disks[0]!.capacity, cap);

  r = await vmlift('image', 'export', ...D, '--source', 'web-1', '--image', '1', '--disk', '0', '--format', 'raw', '--output', join(dir, 'out.raw'));
  assert.equal(r.code, 0, r.err);
  assert.equal(sha(await readFile(join(dir, 'out.raw'))), sha(v));

  r = await vmlift('image', 'verify', ...D, '--source', 'web-1', '--image', '2');
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /ok \(32 chunks verified\)/);

  // unknown source / image / disk, bad id, bad format, missing data dir: one clear error, non-zero exit
  for (const [args, msg] of [
    [['image', 'show', ...D, '--source', 'nope', '--image', '1'], /source nope has no images[^]*fix: known sources: web-1/],
    [['image', 'show', ...D, '--source', 'web-1', '--image', '9'], /image 9 of source web-1 does not exist[^]*fix:/],
    [['image', 'export', ...D, '--source', 'web-1', '--image', '1', '--disk', '3', '--output', join(dir, 'x.raw')], /has no disk 3/],
    [['image', 'export', ...D, '--source', 'web-1', '--image', '1', '--format', 'vhd', '--output', join(dir, 'x.raw')], /unknown format "vhd"/],
    [['image', 'ls', ...D, '--source', '../etc'], /invalid source id/],
    [['image', 'ls', '--data-dir', join(dir, 'missing')], /data folder .* does not exist/],
  ] as const) {
    r = await vmlift(...args);
    assert.equal(r.code, 1, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, msg);
  }

  // a corrupt chunk: verify exits 3 and names the offset
  const d = await store.chunkDigests('web-1', '2', 0, 4, 1);
  const hex = d.toString('hex');
  await corruptChunk(join(dataDir, 'store'), hex, 10);
  r = await vmlift('image', 'verify', ...D, '--source', 'web-1', '--image', '2', '--json');
  assert.equal(r.code, 3);
  const ver = JSON.parse(r.out) as { ok: boolean; bad: { offset: number }[] };
  assert.equal(ver.ok, false);
  assert.deepEqual(ver.bad.map((b) => b.offset), [4 * (64 << 10)]);

  r = await vmlift('image', 'rm', ...D, '--source', 'web-1', '--image', '1', '--json');
  assert.equal(r.code, 0, r.err);
  assert.equal((JSON.parse(r.out) as { removed: boolean }).removed, true);
  r = await vmlift('image', 'ls', ...D, '--json');
  assert.deepEqual((JSON.parse(r.out) as { images: { imageId: string }[] }).images.map((i) => i.imageId), ['2']);
});
