import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, ftruncateSync, mkdirSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import type { Logger } from '../../src/util/log.ts';
import { SourceReadError } from '../../src/source/retry.ts';
import { VddkSource, VddkUnavailableError, parseVddkUri, shutdownVddk, vddkOpenCounts, type VddkSourceOptions } from '../../src/source/vddk/index.ts';
import { UserError } from '../../src/util/errors.ts';
import { makeDiskData, readAll, sha256, tempDir } from './helpers.ts';

const root = path.resolve(import.meta.dirname, '../..');
const libdir = path.join(root, 'native/build/vddk-double');
const MiB = 1 << 20;
const { dir, cleanup } = tempDir('vmlift-vddk-');
after(() => { shutdownVddk(); cleanup(); });

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

function capture(): { logger: ReturnType<typeof pino>; lines: () => string[] } {
  const out: string[] = [];
  const stream = new Writable({ write(c, _e, cb) { out.push(c.toString()); cb(); } });
  return { logger: pino({ level: 'debug' }, stream), lines: () => out };
}

const size = 20 * MiB + 3 * 512; // a tail shorter than one QueryAllocatedBlocks chunk
const data = makeDiskData(size, 5);
const flat = path.join(dir, 'ds1', 'vm1', 'vm1-flat.vmdk');
const THUMB = '12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78';
const config = (extra = ''): string => {
  const f = path.join(dir, `vddk-${Math.random().toString(36).slice(2)}.conf`);
  writeFileSync(f, `datastores=${dir}\nuser=administrator@vsphere.local\npassword=s3cret-pw\ncookie=vmware_soap_session="abc123"\nthumbprint=${THUMB}\ntransports=nbdssl:nbd\n${extra}`);
  return f;
};
const remote = (configFile: string, o: Partial<VddkSourceOptions> = {}): VddkSourceOptions => ({
  libdir, configFile, server: 'vcenter.lab', port: 443, nfcHostPort: 902, thumbprint: THUMB,
  credentials: { user: 'administrator@vsphere.local', password: 's3cret-pw' },
  vm: 'vm-42', snapshot: 'snapshot-7', diskPath: '[ds1] vm1/vm1.vmdk', transports: 'hotadd:nbdssl:nbd', ...o,
});

before(() => {
  execFileSync(path.join(root, 'native/build.sh'), { stdio: 'inherit' });
  mkdirSync(path.dirname(flat), { recursive: true });
  writeSparse(flat, data);
});

/** VDDK state is per process: each test starts from a fresh InitEx with its own configuration. */
async function fresh<T>(fn: () => Promise<T>): Promise<T> {
  shutdownVddk();
  return fn();
}

describe('VDDK binding driven against the libvixDiskLib double', () => {
  for (const mode of ['async', 'sync'] as const) {
    it(`reads every byte of a local disk (${mode === 'async' ? 'ReadAsync + Wait' : 'Read on a worker thread'})`, () => fresh(async () => {
      const src = await VddkSource.open({ libdir, diskPath: flat, mode, maxInFlight: 6 });
      try {
        assert.equal(src.capacity, size);
        assert.equal(src.transportMode, 'file');
        assert.equal(sha256(await readAll(src, { chunk: 1 * MiB, uneven: true })), sha256(data));
        assert.equal(sha256(await readAll(src, { chunk: 1 * MiB, uneven: true, into: true })), sha256(data));
      } finally { await src.close(); }
    }));
  }

  it('maps allocated blocks with QueryAllocatedBlocks, including the unaligned tail', () => fresh(async () => {
    const src = await VddkSource.open({ libdir, diskPath: flat });
    try {
      const ext = [];
      for await (const e of src.extents()) ext.push(e);
      let at = 0;
      for (const e of ext) { assert.equal(e.offset, at); at += e.length; }
      assert.equal(at, size);
      for (const e of ext) if (!e.data) assert.ok(data.subarray(e.offset, e.offset + e.length).every((b) => b === 0), `hole at ${e.offset} hides data`);
      // Exactly the non-zero 64 KiB blocks are allocated (writeSparse skipped the zero ones).
      let want = 0;
      for (let o = 0; o < size; o += 65536) if (!data.subarray(o, Math.min(size, o + 65536)).every((b) => b === 0)) want += Math.min(65536, size - o);
      const got = ext.filter((e) => e.data).reduce((a, e) => a + e.length, 0);
      const tail = size % 65536;
      assert.ok(got === want || got === want + tail, `allocated ${got} bytes, expected ${want}`);
      const sub = [];
      for await (const e of src.extents(5 * MiB + 100, MiB)) sub.push(e);
      assert.equal(sub[0]!.offset, 5 * MiB + 100);
      assert.equal(sub.reduce((a, e) => a + e.length, 0), MiB);
    } finally { await src.close(); }
  }));

  it('connects like to vCenter: every ConnectParams field arrives intact and VDDK logs reach pino formatted', () => fresh(async () => {
    const cap = capture();
    const src = await VddkSource.open({ ...remote(config()), logger: cap.logger as unknown as Logger });
    try {
      assert.equal(src.transportMode, 'nbdssl', 'first offered mode of hotadd:nbdssl:nbd');
      assert.equal(src.maxReadSize, 2 * MiB, 'NFC default through vCenter');
      assert.equal(sha256(await readAll(src)), sha256(data));
      assert.match(src.uri, /^vddk:\/\/vcenter\.lab:443\/.*vm=vm-42&snapshot=snapshot-7/);
    } finally { await src.close(); }
    const logs = cap.lines().join('');
    assert.ok(logs.includes(`VixDiskLib: connect server=vcenter.lab port=443 nfcHostPort=902 vmxSpec=moref=vm-42 thumbPrint=${THUMB} ` +
      'credType=1 user=administrator@vsphere.local snapshotRef=snapshot-7 transportModes=hotadd:nbdssl:nbd readOnly=1 specType=0'), logs);
    assert.match(logs, /opened \[ds1\] vm1\/vm1.vmdk \(40963 sectors\) flags 4 transport nbdssl/);
    assert.ok(!logs.includes('s3cret-pw'), 'the password never reaches the log');
  }));

  it('accepts a vSphere session cookie instead of a password', () => fresh(async () => {
    const src = await VddkSource.open(remote(config(), { credentials: { cookie: 'vmware_soap_session="abc123"' } }));
    assert.ok((await src.read(MiB, 4096)).equals(data.subarray(MiB, MiB + 4096)));
    await src.close();
  }));

  it('names the cause and fix of bad credentials, a bad thumbprint, a missing disk and missing transports', () => fresh(async () => {
    const conf = config();
    await assert.rejects(VddkSource.open(remote(conf, { credentials: { user: 'administrator@vsphere.local', password: 'wrong' } })),
      (e: unknown) => e instanceof UserError && e.code === 'VDDK_AUTH' && /VIX error 3014/.test(e.message) && /password/.test(e.fix ?? ''));
    await assert.rejects(VddkSource.open(remote(conf, { thumbprint: 'AA:BB' })), (e: unknown) => e instanceof UserError && e.code === 'VDDK_AUTH' && /thumbprint/.test(e.fix ?? ''));
    await assert.rejects(VddkSource.open(remote(conf, { diskPath: '[ds1] vm1/nope.vmdk' })),
      (e: unknown) => e instanceof UserError && e.code === 'VDDK_DISK_NOT_FOUND' && /A file was not found/.test(e.message));
    await assert.rejects(VddkSource.open(remote(conf, { transports: 'san:hotadd' })),
      (e: unknown) => e instanceof UserError && e.code === 'VDDK_OPEN' && /not supported/.test(e.message));
    await assert.rejects(VddkSource.open({ libdir, diskPath: path.join(dir, 'absent.img') }), (e: unknown) => e instanceof UserError && e.code === 'VDDK_DISK_NOT_FOUND');
  }));

  it('fails a read on a bad sector with its offset and the VIX error, and refuses reads past the end', () => fresh(async () => {
    const src = await VddkSource.open(remote(config('fail_sector=4096\n')));
    try {
      assert.ok((await src.read(0, 65536)).equals(data.subarray(0, 65536)));
      await assert.rejects(src.read(2 * MiB - 512, 4096), (e: unknown) => {
        assert.ok(e instanceof SourceReadError);
        assert.equal(e.offset, 2 * MiB - 512);
        assert.match(e.message, /at offset 2096640 .*VixDiskLib_Read failed: The disk is not accessible: I\/O error \(VIX error 16002\)/);
        return true;
      });
      await assert.rejects(src.read(size - 512, 1024), /outside .* \(capacity 20973056\)/);
    } finally { await src.close(); }
  }));

  it('treats the whole disk as data when QueryAllocatedBlocks is not supported', () => fresh(async () => {
    const src = await VddkSource.open(remote(config('no_query_blocks=1\n')));
    try {
      const ext = [];
      for await (const e of src.extents(MiB, 3 * MiB)) ext.push(e);
      assert.deepEqual(ext, [{ offset: MiB, length: 3 * MiB, data: true }]);
      await assert.rejects(async () => { for await (const e of src.extents(size - 512, 1024)) void e; }, RangeError);
    } finally { await src.close(); }
  }));

  it('retries a busy handle and returns exact bytes', () => fresh(async () => {
    const src = await VddkSource.open({ ...remote(config('busy_reads=3\n')), retry: { attempts: 5, baseDelayMs: 1 } });
    try { assert.ok((await src.read(3 * MiB, 100000)).equals(data.subarray(3 * MiB, 3 * MiB + 100000))); } finally { await src.close(); }
  }));

  it('bounds the disks open at once on one ESXi host', () => fresh(async () => {
    const conf = config();
    const a = await VddkSource.open(remote(conf, { esxiHost: 'esx1', maxOpenDisksPerHost: 1 }));
    let bOpen = false;
    const b = VddkSource.open(remote(conf, { esxiHost: 'esx1', maxOpenDisksPerHost: 1 })).then((s) => { bOpen = true; return s; });
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(bOpen, false, 'second disk waits for a slot');
    await a.close();
    const bs = await b;
    assert.ok(bOpen);
    await bs.close();
  }));

  it('sizes reads to what NFC takes: 2 MiB through vCenter, 23 MiB to ESXi directly, split when longer', () => fresh(async () => {
    const conf = config();
    const esx = await VddkSource.open(remote(conf, { serverKind: 'esxi' }));
    try {
      assert.equal(esx.maxReadSize, 23 * MiB);
      assert.ok((await esx.read(0, size)).equals(data), 'one read of the whole disk');
    } finally { await esx.close(); }
    const vc = await VddkSource.open(remote(conf, { maxReadSize: MiB }));
    try {
      assert.equal(vc.maxReadSize, MiB);
      assert.ok((await vc.read(512, 5 * MiB)).equals(data.subarray(512, 512 + 5 * MiB)), 'a longer read is split at maxReadSize');
    } finally { await vc.close(); }
  }));

  it('counts connections and handles in the stats file, and leaves none open after failed opens', () => fresh(async () => {
    const stats = path.join(dir, 'stats-env');
    process.env.VMLIFT_VDDK_DOUBLE_STATS = stats;
    try {
      const read = () => Object.fromEntries(readFileSync(stats, 'utf8').trim().split('\n').map((l) => l.split('=') as [string, string]));
      const conf = config();
      const src = await VddkSource.open(remote(conf));
      assert.deepEqual([read().connections, read().handles], ['1', '1']);
      assert.deepEqual(vddkOpenCounts(), { connections: 1, disks: 1 });
      await src.close();
      await assert.rejects(VddkSource.open(remote(conf, { diskPath: '[ds1] vm1/nope.vmdk' })));
      await assert.rejects(VddkSource.open(remote(conf, { credentials: { user: 'administrator@vsphere.local', password: 'nope' } })));
      const end = read();
      assert.deepEqual([end.connections, end.handles, end.connects, end.opens], ['0', '0', '2', '1']);
      assert.deepEqual(vddkOpenCounts(), { connections: 0, disks: 0 });
    } finally {
      delete process.env.VMLIFT_VDDK_DOUBLE_STATS;
      shutdownVddk();
    }
  }));

  it('never holds an exiting process: a throw or exit with ReadAsync calls in flight ends it at once', async () => {
    for (const how of ['throw', 'exit']) {
      const t0 = Date.now();
      const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(import.meta.dirname, 'vddk-exit-child.ts'), flat, how], { timeout: 20_000, encoding: 'utf8' });
      assert.equal(r.signal, null, `${how}: the process did not end by itself (${Date.now() - t0} ms)`);
      assert.equal(r.status, how === 'throw' ? 1 : 3, r.stderr);
    }
  });

  it('reports a missing or unusable library clearly, so transport selection can move on', () => {
    assert.throws(() => VddkSourceOpenSync(path.join(dir, 'no-vddk')), (e: unknown) => e instanceof VddkUnavailableError && /no libvixDiskLib.so found/.test(e.message) && /--vddk-libdir/.test(e.fix ?? ''));
    const junk = path.join(dir, 'junk', 'lib64');
    mkdirSync(junk, { recursive: true });
    writeFileSync(path.join(junk, 'libvixDiskLib.so.8'), 'not an ELF file');
    assert.throws(() => VddkSourceOpenSync(path.join(dir, 'junk')), (e: unknown) => e instanceof VddkUnavailableError && /cannot load/.test(e.message));
    const wrong = path.join(dir, 'wrong', 'lib64');
    mkdirSync(wrong, { recursive: true });
    copyFileSync(execFileSync('sh', ['-c', 'ls /usr/lib/*/libz.so.1 /lib/*/libz.so.1 2>/dev/null | head -1']).toString().trim(), path.join(wrong, 'libvixDiskLib.so.8'));
    assert.throws(() => VddkSourceOpenSync(path.join(dir, 'wrong')), (e: unknown) => e instanceof VddkUnavailableError && /not a usable libvixDiskLib/.test(e.message));
  });

  it('parses vddk:// URIs and keeps passwords out of them', () => {
    const o = parseVddkUri(`vddk://administrator%40vsphere.local@vc.example.com/${encodeURIComponent('[ds1] vm1/vm1.vmdk')}?vm=vm-42&snapshot=snapshot-7&transports=nbdssl:nbd`);
    assert.equal(o.server, 'vc.example.com');
    assert.equal(o.user, 'administrator@vsphere.local');
    assert.equal(o.diskPath, '[ds1] vm1/vm1.vmdk');
    assert.equal(o.vm, 'vm-42');
    assert.equal(o.transports, 'nbdssl:nbd');
    assert.equal(parseVddkUri('vddk:///srv/disk.img').diskPath, '/srv/disk.img');
    assert.equal(parseVddkUri('vddk://esx1/x?vm=vm-1&kind=esxi').serverKind, 'esxi');
    assert.throws(() => parseVddkUri('vddk://esx1/x?vm=vm-1&kind=host'), (e: unknown) => e instanceof UserError && e.code === 'VDDK_BAD_URI');
    for (const bad of ['vddk://u:pw@vc/x?vm=vm-1', 'vddk://vc/x', 'vddk://vc/x?vm=42', 'vddk://vc/x?vm=vm-1&snap=1']) {
      assert.throws(() => parseVddkUri(bad), (e: unknown) => e instanceof UserError && e.code === 'VDDK_BAD_URI' && !e.message.includes('pw@'), bad);
    }
  });
});

import { loadVixDiskLib } from '../../src/source/vddk/index.ts';
function VddkSourceOpenSync(dirPath: string): void { loadVixDiskLib(dirPath); }
