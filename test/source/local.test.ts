import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, open, writeFile, truncate } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { LocalSource } from '../../src/source/local/index.ts';
import { openSource } from '../../src/source/open.ts';
import { UserError } from '../../src/util/errors.ts';

const dir = await mkdtemp(join(tmpdir(), 'vmlift-local-'));
after(() => rm(dir, { recursive: true, force: true }));

const MiB = 1024 * 1024;

test('sparse file: capacity, exact reads, SEEK_DATA/SEEK_HOLE map', async () => {
  const path = join(dir, 'sparse.img');
  const a = randomBytes(MiB);
  const b = randomBytes(64 * 1024);
  const fh = await open(path, 'w');
  await fh.write(a, 0, a.length, 4 * MiB);
  await fh.write(b, 0, b.length, 12 * MiB);
  await fh.truncate(32 * MiB);
  await fh.close();
  const src = await openSource(path);
  try {
    assert.equal(src.capacity, 32 * MiB);
    assert.deepEqual(await src.read(4 * MiB, MiB), a);
    assert.deepEqual(await src.read(12 * MiB, 64 * 1024), b);
    assert.ok((await src.read(0, 4096)).every((x) => x === 0));
    const ext = [];
    for await (const e of src.extents!()) ext.push(e);
    assert.deepEqual(ext, [
      { offset: 0, length: 4 * MiB, data: false },
      { offset: 4 * MiB, length: MiB, data: true },
      { offset: 5 * MiB, length: 7 * MiB, data: false },
      { offset: 12 * MiB, length: 64 * 1024, data: true },
      { offset: 12 * MiB + 64 * 1024, length: 20 * MiB - 64 * 1024, data: false },
    ]);
    // A window that starts inside a hole and ends inside data.
    const win = [];
    for await (const e of src.extents!(2 * MiB, 2.5 * MiB)) win.push(e);
    assert.deepEqual(win, [{ offset: 2 * MiB, length: 2 * MiB, data: false }, { offset: 4 * MiB, length: MiB / 2, data: true }]);
    await assert.rejects(src.read(32 * MiB - 512, 1024), /outside/);
  } finally {
    await src.close();
  }
});

test('fully sparse and fully allocated files', async () => {
  const empty = join(dir, 'empty.img');
  await writeFile(empty, '');
  await truncate(empty, 8 * MiB);
  const full = join(dir, 'full.img');
  await writeFile(full, randomBytes(2 * MiB));
  const e = await LocalSource.open(empty);
  const f = await LocalSource.open(full);
  try {
    const a = []; for await (const x of e.extents()) a.push(x);
    assert.deepEqual(a, [{ offset: 0, length: 8 * MiB, data: false }]);
    const b = []; for await (const x of f.extents()) b.push(x);
    assert.deepEqual(b, [{ offset: 0, length: 2 * MiB, data: true }]);
  } finally {
    await e.close(); await f.close();
  }
});

test('bad devices are refused with a cause and a fix', async () => {
  await assert.rejects(LocalSource.open(join(dir, 'nope.img')), (e: unknown) =>
    e instanceof UserError && e.code === 'DEVICE_MISSING' && /does not exist/.test(e.message) && !!e.fix);
  const odd = join(dir, 'odd.img');
  await writeFile(odd, randomBytes(1000));
  await assert.rejects(LocalSource.open(odd), (e: unknown) => e instanceof UserError && e.code === 'DEVICE_SIZE');
  await assert.rejects(LocalSource.open(dir), (e: unknown) => e instanceof UserError && e.code === 'DEVICE_TYPE');
  await assert.rejects(openSource('gopher://x/y'), (e: unknown) => e instanceof UserError && e.code === 'SOURCE_SCHEME');
});

test('block device: capacity through lseek(SEEK_END), whole device reported as data', async (t) => {
  const img = join(dir, 'loop.img');
  const data = randomBytes(MiB);
  await writeFile(img, data);
  await truncate(img, 4 * MiB);
  let dev: string;
  try {
    dev = execFileSync('losetup', ['--find', '--show', '--read-only', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    t.skip('no loop devices here (losetup needs root and /dev/loop*)');
    return;
  }
  try {
    const src = await LocalSource.open(dev);
    try {
      assert.equal(src.isBlockDevice, true);
      assert.equal(src.capacity, 4 * MiB);
      assert.deepEqual(await src.read(0, MiB), data);
      const ext = []; for await (const x of src.extents()) ext.push(x);
      assert.deepEqual(ext, [{ offset: 0, length: 4 * MiB, data: true }]);
    } finally {
      await src.close();
    }
  } finally {
    execFileSync('losetup', ['-d', dev]);
  }
});
