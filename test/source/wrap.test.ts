/** The source wrappers: wrapSource's pass-through, the retry wrapper and the read-size clamp, over real readers. */
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { pino } from 'pino';
import { LocalSource } from '../../src/source/local/index.ts';
import { NbdSource } from '../../src/source/nbd/index.ts';
import { clampReads } from '../../src/source/clamp.ts';
import { retryingSource, SourceReadError } from '../../src/source/retry.ts';
import type { BlockSource, SourceExtent } from '../../src/source/types.ts';
import { wrapSource } from '../../src/source/wrap.ts';
import { CodedError } from '../../src/util/errors.ts';
import type { Logger } from '../../src/util/log.ts';
import { makeDiskData, nbdkit, tempDir, type Server } from './helpers.ts';

const MiB = 1 << 20;
const { dir, cleanup } = tempDir('vmlift-wrap-');
const servers: Server[] = [];
after(async () => { await Promise.all(servers.map((s) => s.stop())); cleanup(); });

const pattern = (offset: number, length: number): Buffer => {
  const b = Buffer.alloc(length + 16);
  const first = Math.floor(offset / 8) * 8;
  for (let o = first; o < offset + length; o += 8) b.writeBigUInt64BE(BigInt(o), o - first);
  return b.subarray(offset - first, offset - first + length);
};

const fastRetry = { attempts: 4, baseDelayMs: 1, maxDelayMs: 2 };

/** A logger that calls `onRetry` with the count of "retrying" warnings so far, as each is written. */
function retryWatcher(onRetry: (n: number) => void): Logger {
  let n = 0;
  const stream = new Writable({
    write(chunk, _e, cb) {
      if (/retrying/.test(String(chunk))) onRetry(++n);
      cb();
    },
  });
  return pino({ level: 'warn' }, stream) as unknown as Logger;
}

/** Counts the reads that reach `inner`, with wrapSource itself. */
function counted<S extends BlockSource>(inner: S): { source: S; reads: Array<[number, number]> } {
  const reads: Array<[number, number]> = [];
  const source = wrapSource(inner, {
    read: (offset, length) => { reads.push([offset, length]); return inner.read(offset, length); },
    readInto: inner.readInto && ((offset, target) => { reads.push([offset, target.length]); return inner.readInto!(offset, target); }),
  });
  return { source, reads };
}

describe('wrapSource', () => {
  it('passes what it does not replace to the inner source, optional members only when the inner one has them', async () => {
    const file = path.join(dir, 'pass.img');
    const data = makeDiskData(4 * MiB, 3);
    writeFileSync(file, data);
    const local = await LocalSource.open(file);
    let closed = 0;
    const w = wrapSource(local, { close: async () => { closed++; await local.close(); } });
    assert.equal(w.uri, file);
    assert.equal(w.transport, 'local');
    assert.equal(w.capacity, 4 * MiB);
    assert.equal(w.maxReadSize, local.maxReadSize);
    assert.equal(w.isBlockDevice, false, 'the reader\'s own members show through');
    assert.ok(typeof w.readInto === 'function', 'the local reader reads into a given buffer, so the wrapper does too');
    const into = Buffer.alloc(70000);
    await w.readInto!(2 * MiB + 5, into);
    assert.ok(into.equals(data.subarray(2 * MiB + 5, 2 * MiB + 5 + 70000)), 'readInto reaches the inner source');
    assert.ok('extents' in w && typeof w.extents === 'function');
    assert.ok((await w.read(MiB + 3, 70000)).equals(data.subarray(MiB + 3, MiB + 3 + 70000)));
    const ext: SourceExtent[] = [];
    for await (const e of w.extents!()) ext.push(e);
    assert.equal(ext.reduce((n, e) => n + e.length, 0), 4 * MiB);
    await w.close();
    assert.equal(closed, 1);
    await assert.rejects(local.read(0, 512), 'the inner source was closed through the wrapper');
  });

  it('keeps getters live and an override given as undefined means no override', async () => {
    let capacity = 4096;
    const inner = {
      uri: 'mem://x', transport: 'mem', maxReadSize: 4096, maxInFlight: 1,
      get capacity() { return capacity; },
      async read(offset: number, length: number) { return Buffer.alloc(length, offset & 0xff); },
      async close() { /* nothing held */ },
    };
    const w = wrapSource(inner, { read: undefined, readInto: undefined });
    assert.equal(w.capacity, 4096);
    capacity = 8192;
    assert.equal(w.capacity, 8192, 'read from the inner source when asked');
    assert.ok((await w.read(7, 3)).equals(Buffer.alloc(3, 7)));
    assert.equal('readInto' in w, false);
    const twice = wrapSource(wrapSource(inner, {}), { maxInFlight: 5 });
    assert.equal(twice.maxInFlight, 5);
    assert.equal(twice.capacity, 8192);
  });

  it('runs the inner source\'s methods on the inner source (NBD: readInto, connectionCount)', async () => {
    const srv = await nbdkit(dir, 'pass', ['pattern', String(8 * MiB)]);
    servers.push(srv);
    const src = await NbdSource.open(srv.uri);
    try {
      const { source, reads } = counted(src);
      assert.equal(source.connectionCount, src.connectionCount);
      assert.deepEqual(source.info, src.info);
      const target = Buffer.alloc(100000);
      await source.readInto!(5 * MiB + 1, target);
      assert.ok(target.equals(pattern(5 * MiB + 1, 100000)));
      assert.deepEqual(reads, [[5 * MiB + 1, 100000]]);
    } finally { await src.close(); }
  });
});

/** An in-memory source whose reads fail with `failure()` until it returns undefined. */
function flaky(failure: (call: number) => Error | undefined): BlockSource & { calls: number } {
  const s = {
    uri: 'mem://flaky', transport: 'mem', capacity: 1 * MiB, maxReadSize: MiB, maxInFlight: 1, calls: 0,
    async read(offset: number, length: number) {
      const e = failure(++s.calls);
      if (e) throw e;
      return Buffer.alloc(length, 1);
    },
    async close() { /* nothing held */ },
  };
  return s;
}

describe('retryingSource', () => {
  it('retries a transient error and returns the data once it clears', async () => {
    const inner = flaky((n) => (n < 3 ? new CodedError('TEST_BUSY', 'busy', { transient: true }) : undefined));
    const src = retryingSource(inner, fastRetry);
    assert.ok((await src.read(0, 16)).equals(Buffer.alloc(16, 1)));
    assert.equal(inner.calls, 3);
  });

  it('gives up after the policy\'s attempts with a SourceReadError naming offset, length and attempts', async () => {
    const inner = flaky(() => new CodedError('TEST_BUSY', 'still busy', { transient: true }));
    const src = retryingSource(inner, { ...fastRetry, attempts: 3 });
    await assert.rejects(src.read(4096, 512), (e: unknown) => {
      assert.ok(e instanceof SourceReadError);
      assert.equal(e.code, 'SOURCE_READ');
      assert.deepEqual([e.offset, e.length, e.attempts, e.uri], [4096, 512, 3, 'mem://flaky']);
      assert.equal(e.transient, true, 'transient like its cause');
      assert.equal(e.message, 'reading 512 bytes at offset 4096 of mem://flaky failed after 3 attempts: still busy');
      assert.ok(e.fix);
      return true;
    });
    assert.equal(inner.calls, 3);
  });

  it('does not retry an error that is not transient, and lets a RangeError pass as it is', async () => {
    const inner = flaky(() => new CodedError('TEST_BAD', 'bad sector'));
    const src = retryingSource(inner, fastRetry);
    await assert.rejects(src.read(0, 512), (e: unknown) => e instanceof SourceReadError && e.attempts === 1 && !e.transient &&
      e.message === 'reading 512 bytes at offset 0 of mem://flaky failed: bad sector');
    assert.equal(inner.calls, 1);
    const ranged = flaky(() => new RangeError('read of 512 bytes at offset 0 is outside'));
    await assert.rejects(retryingSource(ranged, fastRetry).read(0, 512), (e: unknown) => e instanceof RangeError);
    assert.equal(ranged.calls, 1);
  });

  it('resumes an extent query that failed where the extents already handed out end', async () => {
    const starts: number[] = [];
    let failures = 1;
    const inner = {
      ...flaky(() => undefined),
      async *extents(offset = 0, length = MiB - offset): AsyncIterable<SourceExtent> {
        starts.push(offset);
        for (let o = offset; o < offset + length; o += 65536) {
          if (o === 5 * 65536 && failures-- > 0) throw new CodedError('TEST_DROP', 'connection lost', { transient: true });
          yield { offset: o, length: Math.min(65536, offset + length - o), data: (o / 65536) % 2 === 0 };
        }
      },
    };
    const src = retryingSource(inner, fastRetry);
    const got: SourceExtent[] = [];
    for await (const e of src.extents!(0, MiB)) got.push(e);
    assert.deepEqual(starts, [0, 5 * 65536]);
    assert.deepEqual(got.map((e) => e.offset), Array.from({ length: 16 }, (_, i) => i * 65536));
    failures = 9;
    await assert.rejects(async () => { for await (const e of src.extents!(0, MiB)) void e; },
      (e: unknown) => e instanceof SourceReadError && e.offset === 5 * 65536 && e.length === MiB - 5 * 65536 && e.attempts === 4);
  });

  it('NBD: a server error that clears after two retries is read through; one that is not transient is not retried', async () => {
    const trigger = path.join(dir, 'inject-errors');
    writeFileSync(trigger, '');
    const srv = await nbdkit(dir, 'errfile', ['--filter=error', 'pattern', String(8 * MiB), 'error=EIO', 'error-pread-rate=100%', `error-pread-file=${trigger}`]);
    servers.push(srv);
    let cleared = 0;
    const src = await NbdSource.open(srv.uri, { retry: fastRetry, logger: retryWatcher((n) => { cleared = n; if (n === 2) rmSync(trigger); }) });
    try {
      assert.ok((await src.read(3 * MiB, 65536)).equals(pattern(3 * MiB, 65536)));
      assert.equal(cleared, 2, 'two failed attempts, then the third read the data');
    } finally { await src.close(); }

    const perm = await nbdkit(dir, 'eperm', ['--filter=error', 'pattern', String(8 * MiB), 'error=EPERM', 'error-pread-rate=100%']);
    servers.push(perm);
    let retries = 0;
    const p = await NbdSource.open(perm.uri, { retry: fastRetry, logger: retryWatcher((n) => { retries = n; }) });
    try {
      await assert.rejects(p.read(MiB, 4096), (e: unknown) => {
        assert.ok(e instanceof SourceReadError);
        assert.deepEqual([e.offset, e.length, e.attempts], [MiB, 4096, 1]);
        assert.match(e.message, /^reading 4096 bytes at offset 1048576 of .* failed: .*EPERM/);
        return true;
      });
      assert.equal(retries, 0);
    } finally { await p.close(); }
  });
});

describe('clampReads', () => {
  it('splits a read longer than the clamp into reads of the clamp, in order, and reads as the inner source would', async () => {
    const srv = await nbdkit(dir, 'clamp', ['pattern', String(8 * MiB)]);
    servers.push(srv);
    const src = await NbdSource.open(srv.uri, { maxReadSize: 64 * 1024 });
    try {
      const { source, reads } = counted(src);
      const clamped = clampReads(source, 16 * 1024);
      assert.equal(clamped.maxReadSize, 16 * 1024);
      assert.ok((await clamped.read(MiB + 5, 40000)).equals(pattern(MiB + 5, 40000)));
      assert.deepEqual(reads, [[MiB + 5, 16384], [MiB + 5 + 16384, 16384], [MiB + 5 + 32768, 40000 - 32768]]);
      reads.length = 0;
      const target = Buffer.alloc(100000);
      await clamped.readInto!(2 * MiB, target);
      assert.ok(target.equals(pattern(2 * MiB, 100000)));
      assert.equal(reads.length, 7);
      assert.ok(reads.every(([, n]) => n <= 16384));
      reads.length = 0;
      assert.ok((await clamped.read(0, 16384)).equals(pattern(0, 16384)));
      assert.deepEqual(reads, [[0, 16384]], 'a read within the clamp goes through as it is');

      assert.equal(clampReads(src, 4 * MiB).maxReadSize, 64 * 1024, 'never above the inner source\'s limit');
      // Unclamped, a read above the inner limit is refused; clamped at the inner limit, it is split.
      await assert.rejects(src.read(0, 200000), RangeError);
      assert.ok((await clampReads(src).read(0, 200000)).equals(pattern(0, 200000)));
    } finally { await src.close(); }
  });

  it('leaves out readInto when the inner source has none', async () => {
    const data = makeDiskData(2 * MiB, 9);
    const inner: BlockSource = {
      uri: 'mem://clamp', transport: 'mem', capacity: data.length, maxReadSize: 65536, maxInFlight: 1,
      async read(offset: number, length: number) { return Buffer.from(data.subarray(offset, offset + length)); },
      async close() { /* nothing held */ },
    };
    const c = clampReads(inner, 4096);
    assert.equal('readInto' in c, false);
    assert.equal((c as BlockSource).readInto, undefined);
    assert.ok((await c.read(12345, 300000)).equals(data.subarray(12345, 312345)));
  });
});
