import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { openSync, closeSync, writeSync, ftruncateSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { NbdSource, parseNbdUri } from '../../src/source/nbd/index.ts';
import { UserError } from '../../src/util/errors.ts';
import { freePort, makeDiskData, nbdkit, portReady, readAll, sha256, socketReady, startServer, tempDir, type Server } from './helpers.ts';

const MiB = 1 << 20;
const { dir, cleanup } = tempDir('vmlift-nbd-');
const servers: Server[] = [];
after(async () => { await Promise.all(servers.map((s) => s.stop())); cleanup(); });

/** Writes `data` leaving all-zero 64 KiB blocks as holes, so extents have something to find. */
function writeSparse(file: string, data: Buffer): void {
  const fd = openSync(file, 'w');
  ftruncateSync(fd, data.length);
  const zero = Buffer.alloc(65536);
  for (let o = 0; o < data.length; o += 65536) {
    const blk = data.subarray(o, o + 65536);
    if (!blk.equals(zero.subarray(0, blk.length))) writeSync(fd, blk, 0, blk.length, o);
  }
  closeSync(fd);
}

async function collect(src: NbdSource, offset?: number, length?: number): Promise<Array<{ offset: number; length: number; data: boolean }>> {
  const out = [];
  for await (const e of src.extents(offset, length)) out.push(e);
  return out;
}

function assertTiles(ext: Array<{ offset: number; length: number }>, start: number, end: number): void {
  let at = start;
  for (const e of ext) { assert.equal(e.offset, at, 'extents are contiguous'); assert.ok(e.length > 0); at += e.length; }
  assert.equal(at, end, 'extents cover the range');
}

/** Every non-zero byte of `data` must lie in a data extent (holes may only hide zeros). */
function assertZeroOutsideData(data: Buffer, ext: Array<{ offset: number; length: number; data: boolean }>): void {
  for (const e of ext) if (!e.data) assert.ok(data.subarray(e.offset, e.offset + e.length).every((b) => b === 0), `hole at ${e.offset} hides data`);
}

describe('NBD client against nbdkit', () => {
  const size = 24 * MiB + 12345; // not a multiple of any block size
  const data = makeDiskData(size, 7);
  const file = path.join(dir, 'disk.raw');
  before(() => writeSparse(file, data));

  it('reads every byte of a file export (uneven, unaligned parallel reads) and maps its holes', async () => {
    const srv = await nbdkit(dir, 'file', ['--read-only', 'file', file]);
    servers.push(srv);
    const src = await NbdSource.open(srv.uri);
    try {
      assert.equal(src.capacity, size);
      assert.equal(src.transport, 'nbd');
      assert.ok(src.connectionCount >= 1);
      const got = await readAll(src, { chunk: 1 * MiB, uneven: true });
      assert.equal(sha256(got), sha256(data));
      assert.equal(sha256(await readAll(src, { chunk: 1 * MiB, uneven: true, into: true })), sha256(data), 'readInto gives the same bytes');
      const ext = await collect(src);
      assertTiles(ext, 0, size);
      assertZeroOutsideData(data, ext);
      assert.ok(ext.some((e) => !e.data), 'the sparse file has holes');
      const dataBytes = ext.filter((e) => e.data).reduce((a, e) => a + e.length, 0);
      assert.ok(dataBytes < size * 0.8, `holes are reported (${dataBytes} of ${size} bytes are data)`);
      // A sub-range starts and ends where asked.
      const sub = await collect(src, 3 * MiB + 17, 5 * MiB);
      assertTiles(sub, 3 * MiB + 17, 8 * MiB + 17);
      // Single reads at the edges.
      assert.deepEqual(await src.read(size - 5, 5), data.subarray(size - 5));
      assert.deepEqual(await src.read(0, 1), data.subarray(0, 1));
      await assert.rejects(src.read(size - 5, 6), /outside/);
      await assert.rejects(collect(src, size - 5, 6), RangeError);
    } finally { await src.close(); }
  });

  it('uses several connections on a multi-conn memory export and reads back what nbdcopy wrote', async () => {
    const srv = await nbdkit(dir, 'mem', ['memory', String(8 * MiB)]);
    servers.push(srv);
    const small = data.subarray(0, 8 * MiB);
    const raw = path.join(dir, 'small.raw');
    writeSparse(raw, small);
    execFileSync('nbdcopy', [raw, srv.uri]);
    const src = await NbdSource.open(srv.uri, { connections: 3, inFlightPerConnection: 8 });
    try {
      assert.equal(src.connectionCount, 3, 'memory plugin advertises multi-conn');
      assert.equal(src.maxInFlight, 24);
      assert.equal(sha256(await readAll(src, { chunk: 256 * 1024 })), sha256(small));
      const ext = await collect(src);
      assertTiles(ext, 0, 8 * MiB);
      assertZeroOutsideData(small, ext);
    } finally { await src.close(); }
  });

  it('reads the pattern plugin over TCP: every 8-byte word holds its own offset', async () => {
    const port = await freePort();
    const srv = await startServer('nbdkit', ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), 'pattern', String(6 * MiB)], portReady(port));
    servers.push(srv);
    const src = await NbdSource.open(`nbd://127.0.0.1:${port}/`);
    try {
      const got = await readAll(src, { chunk: 512 * 1024, uneven: true });
      const want = Buffer.alloc(6 * MiB);
      for (let o = 0; o < want.length; o += 8) want.writeBigUInt64BE(BigInt(o), o);
      assert.ok(got.equals(want));
    } finally { await src.close(); }
  });

  it('matches nbdcopy on sparse-random, bytes and allocation map', async () => {
    const srv = await nbdkit(dir, 'sr', ['sparse-random', String(32 * MiB), 'seed=42', 'percent=30']);
    servers.push(srv);
    const ref = path.join(dir, 'sr.raw');
    execFileSync('nbdcopy', [srv.uri, ref]);
    const want = readFileSync(ref);
    const src = await NbdSource.open(srv.uri);
    try {
      assert.equal(sha256(await readAll(src)), sha256(want));
      const ext = await collect(src);
      assertTiles(ext, 0, 32 * MiB);
      assertZeroOutsideData(want, ext);
      const map = JSON.parse(execFileSync('nbdinfo', ['--map', '--json', srv.uri]).toString()) as Array<{ offset: number; length: number; type: number }>;
      const dataBytes = (xs: Array<{ length: number; ok: boolean }>): number => xs.filter((x) => x.ok).reduce((a, x) => a + x.length, 0);
      assert.equal(dataBytes(ext.map((e) => ({ length: e.length, ok: e.data }))), dataBytes(map.map((m) => ({ length: m.length, ok: (m.type & 2) === 0 }))),
        'same data bytes as nbdinfo --map');
    } finally { await src.close(); }
  });

  it('names a missing export and refuses a server that is not there', async () => {
    const srv = await nbdkit(dir, 'named', ['--filter=exportname', 'memory', '1M', 'exportname=disk1', 'exportname-strict=true']);
    servers.push(srv);
    const ok = await NbdSource.open(`nbd+unix:///disk1?socket=${srv.socket}`);
    assert.equal(ok.capacity, 1 * MiB);
    await ok.close();
    await assert.rejects(NbdSource.open(`nbd+unix:///nope?socket=${srv.socket}`, { retry: { attempts: 1 } }), (e: unknown) => {
      assert.ok(e instanceof UserError);
      assert.match(e.message, /export "nope" not found/);
      assert.match(e.fix ?? '', /nbdinfo --list/);
      return true;
    });
    await assert.rejects(NbdSource.open(`nbd+unix:///?socket=${path.join(dir, 'absent.sock')}`, { retry: { attempts: 2, baseDelayMs: 10 } }),
      (e: unknown) => e instanceof UserError && /cannot connect.*ENOENT/.test(e.message) && /running/.test(e.fix ?? ''));
  });

  it('reconnects after the server restarts', async () => {
    const file2 = path.join(dir, 'restart.raw');
    writeSparse(file2, data.subarray(0, 4 * MiB));
    let srv = await nbdkit(dir, 'restart', ['--read-only', 'file', file2]);
    const src = await NbdSource.open(srv.uri, { retry: { attempts: 6, baseDelayMs: 100 } });
    try {
      assert.deepEqual(await src.read(MiB, 4096), data.subarray(MiB, MiB + 4096));
      await srv.stop();
      rmSync(srv.socket, { force: true });
      const again = nbdkit(dir, 'restart', ['--read-only', 'file', file2]);
      const reading = src.read(2 * MiB, 65536);
      srv = await again;
      servers.push(srv);
      assert.deepEqual(await reading, data.subarray(2 * MiB, 2 * MiB + 65536));
    } finally { await src.close(); }
  });
});

describe('NBD client against qemu-nbd', () => {
  const size = 16 * MiB;
  const data = makeDiskData(size, 99);
  const raw = path.join(dir, 'q.raw');
  const qcow = path.join(dir, 'q.qcow2');
  before(() => {
    writeSparse(raw, data);
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow]);
  });

  for (const fmt of ['raw', 'qcow2'] as const) {
    it(`reads a ${fmt} image byte for byte, with its allocation map`, async () => {
      const sock = path.join(dir, `qemu-${fmt}.sock`);
      const srv = await startServer('qemu-nbd', ['--read-only', '--persistent', '--shared=4', '-f', fmt, '-k', sock, fmt === 'raw' ? raw : qcow], socketReady(sock));
      servers.push(srv);
      const src = await NbdSource.open(`nbd+unix:///?socket=${sock}`);
      try {
        assert.equal(src.capacity, size);
        assert.equal(sha256(await readAll(src, { chunk: 1 * MiB, uneven: true })), sha256(data));
        assert.equal(sha256(await readAll(src, { chunk: 1 * MiB, uneven: true, into: true })), sha256(data));
        const ext = await collect(src);
        assertTiles(ext, 0, size);
        assertZeroOutsideData(data, ext);
        assert.ok(ext.some((e) => !e.data));
      } finally { await src.close(); await srv.stop(); }
    });
  }
});

describe('NBD URIs', () => {
  it('parses libnbd forms', () => {
    assert.deepEqual(parseNbdUri('nbd://example.com/disk%201'), { host: 'example.com', port: 10809, exportName: 'disk 1', tls: false, tlsCertificates: undefined, display: 'nbd://example.com/disk%201' });
    assert.equal(parseNbdUri('nbds://h:1234/').port, 1234);
    assert.equal(parseNbdUri('nbds://h:1234/').tls, true);
    assert.equal(parseNbdUri('nbd://[::1]:99/x').host, '::1');
    const u = parseNbdUri('nbd+unix:///sda?socket=/run/x.sock');
    assert.equal(u.socketPath, '/run/x.sock');
    assert.equal(u.exportName, 'sda');
    assert.equal(parseNbdUri('nbds+unix:///?socket=/s&tls-certificates=/etc/pki').tlsCertificates, '/etc/pki');
  });
  it('rejects bad ones with a fix', () => {
    for (const bad of ['nbd+unix:///x', 'nbd://h/x?socket=/s', 'nbd://user:pw@h/', 'nbd:///x', 'nbd://h/?foo=1', 'nbd://h/?tls-certificates=/d']) {
      assert.throws(() => parseNbdUri(bad), (e: unknown) => e instanceof UserError && e.code === 'NBD_BAD_URI' && !!e.fix, bad);
    }
  });
});
