/**
 * The agent's scan on a real file: what it sends, and that every extent it sends carries its wire
 * digest (the tree digest), derived from the block digests: no byte is hashed twice.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DigestPool } from '../../src/agent/digest-pool.ts';
import { ManifestReader, ManifestWriter } from '../../src/agent/manifest.ts';
import { READ_UNIT, WINDOW, scanDisk, type ExtentSink } from '../../src/agent/scan.ts';
import { openLocalSource } from '../../src/source/local/index.ts';
import { treeDigest } from '../../src/util/tree-digest.ts';

const dir = await mkdtemp(join(tmpdir(), 'vmlift-scan-'));
after(() => rm(dir, { recursive: true, force: true }));

const WINDOWS = 40;
const path = join(dir, 'disk.img');

/** Counts the window digests asked for alongside block digests. */
class CountingPool extends DigestPool {
  withWhole = 0;
  without = 0;
  override digestOwned(data: Buffer, blockSize: number, whole = true) {
    if (whole) this.withWhole++; else this.without++;
    return super.digestOwned(data, blockSize, whole);
  }
}

interface Sent { offset: number; length: number; digest?: Buffer; sha: string }

/** One scan of `file` against the manifest `oldPath` (null: first cycle) into `newPath`; closes all it opens. */
async function runScan(file: string, oldPath: string | null, newPath: string, pool: DigestPool | null, send: ExtentSink['send']): Promise<void> {
  const source = await openLocalSource(file);
  const old = await ManifestReader.open(oldPath, source.capacity);
  const fresh = await ManifestWriter.create(newPath);
  try {
    await scanDisk({ disk: 0, source, oldManifest: old, newManifest: fresh, sink: { send }, digestPool: pool });
    await fresh.finish();
  } finally {
    await old.close();
    await source.close();
    await pool?.close();
  }
}

async function scan(cycle: number): Promise<{ sent: Sent[]; pool: CountingPool }> {
  const pool = new CountingPool(1);
  const sent: Sent[] = [];
  await runScan(path, cycle === 1 ? null : join(dir, `m${cycle - 1}`), join(dir, `m${cycle}`), pool, async (_disk, offset, data, length, opts) => {
    sent.push({ offset, length, digest: opts?.digest, sha: treeDigest(data ?? Buffer.alloc(length)).toString('hex') });
  });
  return { sent, pool };
}

test('every extent sent carries its tree digest, derived from the block digests (first and incremental cycles)', async () => {
  const fh = await open(path, 'w');
  await fh.write(randomBytes(WINDOWS * WINDOW), 0, WINDOWS * WINDOW, 0);
  await fh.close();

  const c1 = await scan(1);
  assert.equal(c1.sent.length, WINDOWS);
  assert.ok(c1.sent.every((s) => s.length === WINDOW && s.digest?.toString('hex') === s.sha), 'every window carries its correct tree digest');
  // one digest call per read unit (four windows), each window's wire digest from it
  assert.deepEqual([c1.pool.withWhole, c1.pool.without], [WINDOWS * WINDOW / READ_UNIT, 0]);

  // nothing changed: blocks compared, nothing sent
  const c2 = await scan(2);
  assert.equal(c2.sent.length, 0);

  // a 4 KiB change in window 3 and an 8 KiB one in window 5, then windows 10..39 rewritten
  const fh2 = await open(path, 'r+');
  await fh2.write(randomBytes(4096), 0, 4096, 3 * WINDOW + 8192);
  await fh2.write(randomBytes(8192), 0, 8192, 5 * WINDOW + 65536);
  await fh2.write(randomBytes(30 * WINDOW), 0, 30 * WINDOW, 10 * WINDOW);
  await fh2.close();
  const c3 = await scan(3);
  assert.deepEqual(c3.sent.map((s) => s.offset), [3 * WINDOW + 8192, 5 * WINDOW + 65536, ...Array.from({ length: 30 }, (_, i) => (10 + i) * WINDOW)]);
  for (const s of c3.sent) assert.equal(s.digest?.toString('hex'), s.sha, `tree digest of the ${s.length} bytes at ${s.offset}`);
});

test('the manifest holds every block digest (holes, a short last block, with and without a digest pool); sends cover exactly the non-zero blocks', async () => {
  const sparse = join(dir, 'sparse.img');
  const capacity = 6 * WINDOW + 1536; // the last block is short, and a hole
  const fh = await open(sparse, 'w');
  await fh.truncate(capacity);
  const writes: [number, number][] = [[8192, 3 * 4096], [WINDOW - 4096, 8192], [2 * WINDOW + 65536, WINDOW], [5 * WINDOW, 1536]];
  for (const [off, len] of writes) await fh.write(randomBytes(len), 0, len, off);
  await fh.write(Buffer.alloc(4096), 0, 4096, 4 * WINDOW); // allocated but zero: not sent
  await fh.close();
  const image = await readFile(sparse);
  const want = Buffer.alloc(Math.ceil(capacity / 4096) * 16);
  const nonZero: number[] = [];
  for (let b = 0; b * 4096 < capacity; b++) {
    const block = image.subarray(b * 4096, Math.min(capacity, (b + 1) * 4096));
    createHash('sha256').update(block).digest().copy(want, b * 16, 0, 16); // the manifest keeps SHA-256 block digests
    if (block.some((x) => x !== 0)) nonZero.push(b);
  }
  for (const pool of [new DigestPool(1), null]) {
    const mpath = join(dir, `sparse-${pool ? 'pool' : 'inline'}.manifest`);
    const sentBlocks: number[] = [];
    await runScan(sparse, null, mpath, pool, async (_disk, offset, data, length) => {
      assert.ok(data, 'zero blocks of a first cycle are not sent at all');
      for (let b = offset / 4096; b < Math.ceil((offset + length) / 4096); b++) sentBlocks.push(b);
      assert.ok(data.equals(image.subarray(offset, offset + length)), `bytes at ${offset}`);
    });
    const got = await readFile(mpath);
    assert.ok(got.equals(want), `manifest (${pool ? 'digest pool' : 'inline'})`);
    assert.deepEqual(sentBlocks, nonZero, `sent blocks (${pool ? 'digest pool' : 'inline'})`);
  }
});

test('a read unit\'s buffer is read into again only after every window of it handed to the sink was released', async () => {
  const file = join(dir, 'units.img');
  const units = 6;
  const fh = await open(file, 'w');
  await fh.write(randomBytes(units * READ_UNIT + 3 * 4096), 0, units * READ_UNIT + 3 * 4096, 0); // a short last unit too
  await fh.close();
  const disk = await readFile(file);
  const held: { data: Buffer; offset: number; release?: () => void }[] = [];
  let handedOver = 0;
  const check = (h: { data: Buffer; offset: number }): void => {
    assert.ok(h.data.equals(disk.subarray(h.offset, h.offset + h.data.length)), `the ${h.data.length} bytes at ${h.offset} are still the disk's until released`);
  };
  // release in a scrambled order, long after each send: an early reuse would overwrite held bytes
  await runScan(file, null, join(dir, 'units.manifest'), new DigestPool(1), async (_disk, offset, data, _length, opts) => {
    assert.ok(data && data.length <= WINDOW);
    if (opts?.handOver) handedOver++;
    held.push({ data, offset, release: opts?.release });
    if (held.length > 9) {
      const h = held.splice(held.length % 2 === 0 ? 0 : 3, 1)[0]!;
      check(h);
      h.release?.();
    }
  });
  for (const h of held) check(h);
  assert.equal(handedOver, units * READ_UNIT / WINDOW + 1, 'every whole window is handed over');
});
