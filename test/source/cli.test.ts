import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { makeDiskData, nbdkit, sha256, tempDir, type Server } from './helpers.ts';

const root = path.resolve(import.meta.dirname, '../..');
const { dir, cleanup } = tempDir('vmlift-srccli-');
const servers: Server[] = [];
after(async () => { await Promise.all(servers.map((s) => s.stop())); cleanup(); });

async function vmlift(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await promisify(execFile)(path.join(root, 'bin/vmlift'), args, { env: { ...process.env, VMLIFT_LOG_LEVEL: 'silent' } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

describe('vmlift source', () => {
  it('checksums an NBD export and a VDDK disk to the SHA-256 of the data, and maps extents', async () => {
    const data = makeDiskData(6 << 20, 3);
    const file = path.join(dir, 'disk.raw');
    writeFileSync(file, data);
    const srv = await nbdkit(dir, 'cli', ['--read-only', 'file', file]);
    servers.push(srv);
    const [nbd, vddk, info] = await Promise.all([
      vmlift('source', 'checksum', srv.uri, '--json'),
      vmlift('source', 'checksum', `vddk://${file}`, '--vddk-libdir', path.join(root, 'native/build/vddk-double'), '--json'),
      vmlift('source', 'info', srv.uri, '--map', '--json'),
    ]);
    assert.equal(nbd.code, 0, nbd.stderr);
    assert.equal(JSON.parse(nbd.stdout).sha256, sha256(data));
    assert.equal(JSON.parse(nbd.stdout).transport, 'nbd');
    assert.equal(vddk.code, 0, vddk.stderr);
    assert.equal(JSON.parse(vddk.stdout).sha256, sha256(data));
    const i = JSON.parse(info.stdout) as { capacity: number; extents: Array<{ length: number }> };
    assert.equal(i.capacity, data.length);
    assert.equal(i.extents.reduce((a, e) => a + e.length, 0), data.length);
  });

  it('fails with the cause and a fix, non-zero', async () => {
    const [bad, noLib] = await Promise.all([
      vmlift('source', 'info', 'nbd://h/x?bogus=1'),
      vmlift('source', 'info', 'vddk:///tmp/x.img', '--vddk-libdir', path.join(dir, 'nowhere')),
    ]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /error: invalid NBD URI .*bogus[\s\S]*fix: use nbd:\/\//);
    assert.notEqual(noLib.code, 0);
    assert.match(noLib.stderr, /no libvixDiskLib.so found[\s\S]*fix: .*--vddk-libdir/);
  });
});
