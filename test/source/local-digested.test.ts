/**
 * The local reader's digested reads (pread and digests in one native call, the agent's window path):
 * the same bytes and digests as a plain read and Node's crypto, the same errors as readInto, and
 * nothing left open.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readdirSync, readSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalSource, openLocalSource } from '../../src/source/local/index.ts';
import { clampReads } from '../../src/source/clamp.ts';
import { SourceReadError } from '../../src/source/retry.ts';
import { nativeDigest } from '../../src/util/native-digest.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';
import { DigestPool } from '../../src/agent/digest-pool.ts';
import { ManifestReader, ManifestWriter } from '../../src/agent/manifest.ts';
import { WINDOW, scanDisk } from '../../src/agent/scan.ts';

const dir = await mkdtemp(join(tmpdir(), 'vmlift-local-digested-'));
after(() => rm(dir, { recursive: true, force: true }));

const MiB = 1024 * 1024;
const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();
const openFds = (): number => readdirSync('/proc/self/fd').length;

/** `windows` MiB of random data with all-zero blocks and a zero MiB in it. */
async function image(name: string, windows: number): Promise<{ path: string; data: Buffer }> {
  const data = randomBytes(windows * MiB);
  data.fill(0, 8192, 16384);
  data.fill(0, 2 * MiB, 3 * MiB);
  const path = join(dir, name);
  await writeFile(path, data);
  return { path, data };
}

test('the native digester reads: setup built it (npm test runs native/build.sh)', () => {
  assert.ok(nativeDigest()?.preadBlocks, 'native/build/libvmlift-digest.so lacks vmlift_pread_digest_blocks');
});

test('a digested read gives the bytes of a plain read and the digests Node computes, for every window', async () => {
  const { path, data } = await image('same.img', 6);
  const src = await openLocalSource(path);
  try {
    assert.ok(src.readIntoDigested, 'the local reader (under its retry wrapper) reads digested');
    for (let w = 0; w < 6; w++) {
      const target = Buffer.alloc(MiB, 0xa5); // stale contents must not show through
      const d = await src.readIntoDigested(w * MiB, target, MiB);
      const want = data.subarray(w * MiB, (w + 1) * MiB);
      assert.equal(sha(target).toString('hex'), sha(want).toString('hex'), `bytes of window ${w}`);
      for (let b = 0; b < 256; b++) {
        const block = want.subarray(b * 4096, (b + 1) * 4096);
        assert.ok(d.digests.subarray(b * 32, (b + 1) * 32).equals(sha(block)), `digest of block ${b} of window ${w}`);
        assert.equal(d.zero[b], block.every((x) => x === 0) ? 1 : 0, `zero flag of block ${b} of window ${w}`);
      }
      assert.ok(d.pieceDigests?.equals(treeDigest(want)), `tree digest of window ${w}`);
    }
    // 4 MiB in 1 MiB pieces: one tree digest per piece
    const four = Buffer.allocUnsafe(4 * MiB);
    const d = await src.readIntoDigested(MiB, four, MiB);
    assert.ok(four.equals(data.subarray(MiB, 5 * MiB)));
    for (let p = 0; p < 4; p++) assert.ok(d.pieceDigests!.subarray(p * 32, (p + 1) * 32).equals(treeDigest(data.subarray((1 + p) * MiB, (2 + p) * MiB))), `piece ${p}`);
    await assert.rejects(src.readIntoDigested(5 * MiB + 4096, Buffer.alloc(MiB), MiB), RangeError, 'past the capacity: the caller\'s mistake, as readInto');
    await assert.rejects(clampReads(src, MiB).readIntoDigested!(0, Buffer.alloc(2 * MiB), MiB), RangeError, 'longer than the clamp: not split');
  } finally {
    await src.close();
  }
});

test('a file truncated under the reader: the digested read fails as readInto does, naming the offset', async () => {
  const { path } = await image('cut.img', 4);
  const src = await openLocalSource(path);
  try {
    await truncate(path, 2 * MiB + 12288);
    const errs: unknown[] = [];
    await src.readInto!(2 * MiB, Buffer.alloc(MiB)).catch((e: unknown) => errs.push(e));
    await src.readIntoDigested!(2 * MiB, Buffer.alloc(MiB), MiB).catch((e: unknown) => errs.push(e));
    assert.equal(errs.length, 2);
    for (const e of errs) {
      assert.ok(e instanceof SourceReadError, String(e));
      assert.equal(e.offset, 2 * MiB);
      assert.equal(e.length, MiB);
      assert.equal(e.attempts, 1, 'not transient: not retried');
      assert.match(e.message, new RegExp(`ended at offset ${2 * MiB + 12288}, before its capacity ${4 * MiB}`));
    }
    assert.equal((errs[0] as Error).message, (errs[1] as Error).message);
    // what is still there reads as before
    const head = Buffer.alloc(MiB);
    await src.readIntoDigested!(0, head, MiB);
    assert.ok(head.equals((await readFile(path)).subarray(0, MiB)));
  } finally {
    await src.close();
  }
});

test('a failed pread answers its errno and offset; the error is the one Node\'s fs gives for it', async () => {
  const native = nativeDigest()!;
  const fd = openSync(dir, 'r'); // reading a directory: EISDIR from pread itself
  try {
    const r = await native.preadBlocks!(fd, 8192, Buffer.alloc(MiB), 4096, 32, MiB);
    assert.ok('errno' in r, 'a failure, not digests');
    assert.equal(r.at, 8192);
    let nodeErr: NodeJS.ErrnoException | undefined;
    try { readSync(fd, Buffer.alloc(16), 0, 16, 8192); } catch (e) { nodeErr = e as NodeJS.ErrnoException; }
    assert.equal(-r.errno, nodeErr?.errno, 'the same errno as Node\'s read');
  } finally {
    closeSync(fd);
  }
});

test('close waits for digested reads under way and leaves no descriptor open', async () => {
  const { path } = await image('fds.img', 8);
  const before = openFds();
  for (let i = 0; i < 3; i++) {
    const src = await LocalSource.open(path);
    const reads = Array.from({ length: 8 }, (_, w) => src.readIntoDigested!(w * MiB, Buffer.allocUnsafe(MiB), MiB));
    await src.close(); // while the reads run: they finish on the descriptor they started on
    const done = await Promise.allSettled(reads);
    assert.ok(done.every((r) => r.status === 'fulfilled'), 'no read saw a closed or reused descriptor');
    await assert.rejects(src.readIntoDigested!(0, Buffer.allocUnsafe(MiB), MiB), /closed/);
  }
  assert.equal(openFds(), before);
});

test('a scan through digested reads sends the image and writes the manifest that the two-step path does', async () => {
  const { path, data } = await image('scan.img', 9);
  // a short last window (the end of the disk reads then digests)
  const fh = await open(path, 'a');
  await fh.write(randomBytes(20480));
  await fh.close();
  const full = await readFile(path);
  const results: string[] = [];
  for (const pool of [new DigestPool(1, true), new DigestPool(1, false)]) {
    const source = await openLocalSource(path);
    const mpath = join(dir, `scan-${pool.isNative}.manifest`);
    const old = await ManifestReader.open(null, source.capacity);
    const fresh = await ManifestWriter.create(mpath);
    const copy = Buffer.alloc(source.capacity);
    const fdsBefore = openFds();
    try {
      const r = await scanDisk({ disk: 0, source, oldManifest: old, newManifest: fresh, digestPool: pool, wholeDigest: true, sink: { send: async (_d, offset, buf, length, opts) => {
        if (buf) {
          buf.copy(copy, offset);
          assert.equal(opts?.digest?.toString('hex'), treeDigest(buf).toString('hex'), `wire digest at ${offset}`);
        }
        assert.ok(length <= WINDOW);
        opts?.release?.();
      } } });
      await fresh.finish();
      assert.equal(r.sha256, sha(full).toString('hex'), 'whole-disk digest');
      assert.equal(sha(copy).toString('hex'), sha(full).toString('hex'), 'the image sent is the disk');
      results.push(sha(await readFile(mpath)).toString('hex'));
    } finally {
      await old.close();
      await source.close();
      await pool.close();
    }
    assert.ok(openFds() <= fdsBefore);
  }
  assert.equal(results[0], results[1], 'the same manifest either way');
  assert.ok(data.length > 0);
});

test('a scan of a loop device reads digested and sends its bytes', async (t) => {
  const { path, data } = await image('loop.img', 4);
  let dev: string;
  try {
    dev = execFileSync('losetup', ['--find', '--show', '--read-only', path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    t.skip('no loop devices here (losetup needs root and /dev/loop*)');
    return;
  }
  try {
    const source = await openLocalSource(dev);
    const old = await ManifestReader.open(null, source.capacity);
    const fresh = await ManifestWriter.create(join(dir, 'loop.manifest'));
    const copy = Buffer.alloc(source.capacity);
    const pool = new DigestPool(1, true);
    try {
      await scanDisk({ disk: 0, source, oldManifest: old, newManifest: fresh, digestPool: pool, sink: { send: async (_d, offset, buf) => { buf?.copy(copy, offset); } } });
      await fresh.finish();
    } finally {
      await old.close(); await source.close(); await pool.close();
    }
    assert.equal(sha(copy).toString('hex'), sha(data).toString('hex'));
  } finally {
    execFileSync('losetup', ['-d', dev]);
  }
});
