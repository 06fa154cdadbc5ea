import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { NbdSource } from '../../src/source/nbd/index.ts';
import { SourceReadError } from '../../src/source/retry.ts';
import { fakeData, startFakeServer, type Misbehaviour } from './fake-nbd-server.ts';
import { nbdkit, readAll, tempDir, type Server } from './helpers.ts';

const MiB = 1 << 20;
const { dir, cleanup } = tempDir('vmlift-nbdf-');
const servers: Server[] = [];
after(async () => { await Promise.all(servers.map((s) => s.stop())); cleanup(); });

const pattern = (size: number): Buffer => {
  const b = Buffer.alloc(size);
  for (let o = 0; o < size; o += 8) b.writeBigUInt64BE(BigInt(o), o);
  return b;
};

describe('NBD client under faults injected by nbdkit filters', () => {
  it('retries transient EIO from the error filter and still returns exact bytes', async () => {
    const srv = await nbdkit(dir, 'err20', ['--filter=error', 'pattern', String(8 * MiB), 'error=EIO', 'error-pread-rate=20%']);
    servers.push(srv);
    const src = await NbdSource.open(srv.uri, { retry: { attempts: 12, baseDelayMs: 1, maxDelayMs: 5 } });
    try {
      assert.ok((await readAll(src, { chunk: 256 * 1024 })).equals(pattern(8 * MiB)));
    } finally { await src.close(); }
  });

  it('fails a read that keeps failing with its offset and the server error', async () => {
    const srv = await nbdkit(dir, 'err100', ['--filter=error', 'pattern', String(8 * MiB), 'error=EIO', 'error-pread-rate=100%']);
    servers.push(srv);
    const src = await NbdSource.open(srv.uri, { retry: { attempts: 3, baseDelayMs: 1 } });
    try {
      await assert.rejects(src.read(3 * MiB, 4096), (e: unknown) => {
        assert.ok(e instanceof SourceReadError);
        assert.equal(e.offset, 3 * MiB);
        assert.match(e.message, /at offset 3145728 .* failed after 3 attempts: .*EIO/);
        return true;
      });
    } finally { await src.close(); }
  });

  it('times out a server that stops answering, naming the offset', async () => {
    const srv = await nbdkit(dir, 'slow', ['--filter=delay', 'pattern', String(1 * MiB), 'rdelay=5']);
    servers.push(srv);
    const src = await NbdSource.open(srv.uri, { requestTimeoutMs: 300, retry: { attempts: 2, baseDelayMs: 1 } });
    const t0 = Date.now();
    try {
      await assert.rejects(src.read(65536, 512), /at offset 65536 .* no reply from the server for 300 ms/);
      assert.ok(Date.now() - t0 < 4000, 'gave up long before the server answered');
    } finally { await src.close().catch(() => undefined); }
  });

  it('reads exact bytes through a throttled link (rate filter) where replies arrive in small pieces', async () => {
    const srv = await nbdkit(dir, 'rate', ['--filter=rate', 'pattern', String(1 * MiB), 'rate=16M', 'burstiness=0.1']);
    servers.push(srv);
    const src = await NbdSource.open(srv.uri);
    try {
      const t0 = Date.now();
      assert.ok((await readAll(src, { chunk: 128 * 1024, uneven: true })).equals(pattern(1 * MiB)));
      assert.ok(Date.now() - t0 > 400, `the rate filter was in the path (${Date.now() - t0} ms)`);
    } finally { await src.close(); }
  });
});

describe('NBD client against a misbehaving server', () => {
  const cases: Array<[Misbehaviour, RegExp]> = [
    ['short', /at offset 8192 .*short reply from the server: no data for offset 12287 \(4095 of 4096 bytes received\)/],
    ['wrong-handle', /at offset 8192 .*reply for unknown handle/],
    ['close-mid-reply', /at offset 8192 .*the server closed the connection in the middle of its reply \(2048 of 4096 bytes received\)/],
    ['error-chunk', /at offset 8192 .*server replied EINVAL \(invalid argument\): disk is on fire/],
    ['outside', /at offset 8192 .*data chunk for offset 12288 length 4096 outside the read/],
    ['bad-magic', /at offset 8192 .*bad reply magic 0xdeadbeef/],
    ['simple-short', /at offset 8192 .*closed the connection in the middle of its reply \(4086 of 4096 bytes received\)/],
  ];
  for (const [mode, re] of cases) {
    it(`${mode}: a clear error naming the offset, never data`, async () => {
      const fake = await startFakeServer(1 * MiB, mode);
      try {
        const src = await NbdSource.open(`nbd://127.0.0.1:${fake.port}/`, { retry: { attempts: 2, baseDelayMs: 1 } });
        await assert.rejects(src.read(8192, 4096), (e: unknown) => {
          assert.ok(e instanceof SourceReadError, String(e));
          assert.match(e.message, re);
          return true;
        });
        await src.close().catch(() => undefined);
      } finally { await fake.close(); }
    });
  }

  it('the same server behaving well gives exact bytes (the fake is a fair baseline)', async () => {
    const fake = await startFakeServer(1 * MiB, 'good');
    try {
      const src = await NbdSource.open(`nbd://127.0.0.1:${fake.port}/`);
      assert.ok((await src.read(8192, 100000)).equals(fakeData(8192, 100000)));
      await src.close();
    } finally { await fake.close(); }
  });
});
