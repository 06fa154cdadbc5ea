/**
 * The VDDK binding against the lab vCenter through the libvixDiskLib double in lab_map mode: the double
 * resolves (VM moref, snapshotRef, disk path as the snapshot's config names it) to the lab's
 * point-in-time NBD view of that disk, so guest writes made while a cycle reads must not show.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startLab, type Lab } from '../../lab/lab.ts';
import {
  isVddkNfcResourceError, shutdownVddk, VddkSource, vddkOpenCounts, type VddkSourceOptions,
} from '../../src/source/vddk/index.ts';
import type { BlockSource } from '../../src/source/types.ts';
import { CodedError, UserError } from '../../src/util/errors.ts';
import type { VCenter } from '../../src/vsphere/index.ts';
import { connect, vmlift } from '../vsphere/helpers.ts';
import { makeDiskData, readAll, sha256, tempDir } from './helpers.ts';

const root = path.resolve(import.meta.dirname, '../..');
const libdir = path.join(root, 'native/build/vddk-double');
const MiB = 1 << 20;
const VM = 'vm-0001';
const { dir, cleanup } = tempDir('vmlift-vddk-lab-');
const stats = path.join(dir, 'vddk-stats');
let lab: Lab;
let vc: VCenter;
let key: number;
let capacity: number;
let moref: string;

before(async () => {
  execFileSync(path.join(root, 'native/build.sh'));
  lab = await startLab({ dir: path.join(dir, 'lab'), vms: 1, diskMb: 16, vddkMap: true });
  vc = await connect(lab);
  const vm = lab.vm(VM);
  moref = vm.moref;
  key = vm.disks[0]!.key;
  capacity = vm.disks[0]!.capacity;
  await lab.write(VM, key, 0, makeDiskData(4 * MiB, 11));
});
after(async () => { shutdownVddk(); await lab?.stop(); cleanup(); });

/** The double's counters (stats_file): connections and handles open now, and totals. */
function counters(): Record<string, number> {
  return Object.fromEntries(readFileSync(stats, 'utf8').trim().split('\n').map((l) => l.split('=')).map(([k, v]) => [k!, Number(v)]));
}

/** A fresh InitEx with this config (VDDK reads it once per InitEx). */
function config(extra = ''): string {
  shutdownVddk();
  const f = path.join(dir, `vddk-${Math.random().toString(36).slice(2)}.conf`);
  writeFileSync(f, `lab_map=${lab.vddkMapFile}\nstats_file=${stats}\n${extra}`);
  return f;
}

function opts(configFile: string, snapshot: string | undefined, diskPath: string, o: Partial<VddkSourceOptions> = {}): VddkSourceOptions {
  const u = new URL(lab.url);
  return {
    libdir, configFile, server: u.hostname, port: Number(u.port), thumbprint: lab.thumbprintSha1,
    credentials: { user: lab.user, password: lab.password }, vm: moref, snapshot, diskPath, ...o,
  };
}

async function snapshotPath(snap: string): Promise<string> {
  const d = (await vc.snapshotDisks(snap)).find((x) => x.key === key);
  assert.ok(d, `snapshot ${snap} has disk ${key}`);
  return d.file;
}

/** Reads the whole disk 1 MiB at a time, writing to the live disk between reads. */
async function readWhileWriting(src: BlockSource, seed: number): Promise<Buffer> {
  const out = Buffer.alloc(src.capacity);
  for (let off = 0, i = 0; off < src.capacity; off += MiB, i++) {
    await lab.write(VM, key, (i * 7 % 16) * MiB + 4096, Buffer.alloc(8192, seed + i));
    (await src.read(off, Math.min(MiB, src.capacity - off))).copy(out, off);
  }
  return out;
}

function assertNoLeaks(): void {
  const c = counters();
  assert.equal(c.connections, 0, 'no VDDK connection left open');
  assert.equal(c.handles, 0, 'no VDDK disk handle left open');
  assert.deepEqual(vddkOpenCounts(), { connections: 0, disks: 0 });
}

describe('VDDK against the lab: the double serves the snapshot, as ESXi does', () => {
  let s1: string;
  let s2: string;
  let ref1: string;

  it('reads a disk at its snapshot bit for bit while the guest writes to the live disk', async () => {
    s1 = (await vc.createSnapshot(moref, 'vmlift-vddk-1', { quiesce: false })).ref;
    ref1 = sha256(await lab.read(VM, key, 0, capacity, s1));
    const src = await VddkSource.open(opts(config(), s1, await snapshotPath(s1)));
    try {
      assert.equal(src.capacity, capacity);
      assert.equal((src as VddkSource).transportMode, 'nbdssl');
      assert.equal(src.maxReadSize, 2 * MiB, 'NFC read size through vCenter');
      const image = await readWhileWriting(src, 1);
      assert.equal(sha256(image), ref1, 'the image is the snapshot, not the live disk');
      assert.notEqual(sha256(await lab.read(VM, key, 0, capacity)), ref1, 'the guest did write to the live disk meanwhile');
      const c = counters();
      assert.equal(c.connections, 1);
      assert.equal(c.handles, 1);
    } finally { await src.close(); }
    assertNoLeaks();
  });

  it('reads the second snapshot of a chain by its delta disk path, and each snapshot only by its own path', async () => {
    s2 = (await vc.createSnapshot(moref, 'vmlift-vddk-2', { quiesce: false })).ref;
    const p1 = await snapshotPath(s1);
    const p2 = await snapshotPath(s2);
    assert.notEqual(p2, p1, 'the second snapshot names a delta disk');
    assert.match(p2, /-000001\.vmdk$/);
    const ref2 = sha256(await lab.read(VM, key, 0, capacity, s2));
    assert.notEqual(ref2, ref1);
    const conf = config();
    const src = await VddkSource.open(opts(conf, s2, p2, { mode: 'sync' }));
    try { assert.equal(sha256(await readWhileWriting(src, 40)), ref2); } finally { await src.close(); }
    const old = await VddkSource.open(opts(conf, s1, p1));
    try { assert.equal(sha256(await readAll(old)), ref1, 'the first snapshot still reads as it was'); } finally { await old.close(); }
    await assert.rejects(VddkSource.open(opts(conf, s1, p2)), (e: unknown) => e instanceof UserError && e.code === 'VDDK_DISK_NOT_FOUND');
    assertNoLeaks();
  });

  it('shares one connection among the disks of one VM at one snapshot', async () => {
    const conf = config();
    const p2 = await snapshotPath(s2);
    const a = await VddkSource.open(opts(conf, s2, p2));
    const b = await VddkSource.open(opts(conf, s2, p2));
    try {
      assert.equal(counters().connections, 1);
      assert.equal(counters().handles, 2);
      assert.ok((await a.read(0, 4096)).equals(await b.read(0, 4096)));
    } finally { await a.close(); }
    assert.equal(counters().connections, 1, 'the connection stays while a disk uses it');
    await b.close();
    assertNoLeaks();
  });

  it('names an unknown VM, snapshot or disk path, and the live disk, with the VIX error and a fix', async () => {
    const conf = config();
    const p1 = await snapshotPath(s1);
    const rejects = (o: VddkSourceOptions, code: string, vix: RegExp) => assert.rejects(VddkSource.open(o), (e: unknown) => {
      assert.ok(e instanceof UserError, String(e));
      assert.equal(e.code, code, e.message);
      assert.match(e.message, vix);
      assert.ok(e.fix);
      return true;
    });
    await rejects(opts(conf, s1, p1, { vm: 'vm-999999' }), 'VDDK_OBJECT_NOT_FOUND', /The object was not found \(VIX error 25\).*vm-999999/);
    await rejects(opts(conf, 'snapshot-999999', p1), 'VDDK_OBJECT_NOT_FOUND', /VIX error 25.*snapshot-999999/);
    await rejects(opts(conf, s1, `[${lab.datastore}] ${VM}/nope.vmdk`), 'VDDK_DISK_NOT_FOUND', /A file was not found \(VIX error 4\)/);
    await rejects(opts(conf, undefined, p1), 'VDDK_DISK_IN_USE', /VIX error 13/);
    assertNoLeaks();
    assert.ok(counters().connects >= 4, 'each attempt connected, and disconnected again');
  });

  it('gives one clear message for refused credentials, and leaks nothing', async () => {
    const p1 = await snapshotPath(s1);
    const isAuth = (e: unknown) => e instanceof UserError && e.code === 'VDDK_AUTH' && /VIX error 3014/.test(e.message) && /password/.test(e.fix ?? '');
    await assert.rejects(VddkSource.open(opts(config(), s1, p1, { credentials: { user: lab.user, password: 'wrong' } })), isAuth);
    await assert.rejects(VddkSource.open(opts(config('auth_fail=1\n'), s1, p1)), isAuth, 'auth_fail refuses even the right password');
    await assert.rejects(VddkSource.open(opts(config(), s1, p1, { credentials: { cookie: 'vmware_soap_session="forged"' } })), isAuth);
    assertNoLeaks();
  });

  it('through the CLI, refused credentials end the command with one clear message and a non-zero exit, leaking nothing', async () => {
    const p1 = await snapshotPath(s1);
    const u = new URL(lab.url);
    const q = new URLSearchParams({ vm: moref, snapshot: s1, thumbprint: lab.thumbprintSha1 });
    const uri = `vddk://${encodeURIComponent(lab.user)}@${u.hostname}:${u.port}/${encodeURIComponent(p1)}?${q}`;
    const conf = config('auth_fail=1\n');
    shutdownVddk();
    const r = await vmlift(['source', 'checksum', uri, '--vddk-libdir', libdir, '--vddk-config', conf, '--password-file', lab.passwordFile]);
    assert.notEqual(r.code, 0);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /VIX error 3014/);
    assert.match(r.stderr, /fix: .*password/);
    assert.equal(r.stderr.match(/VIX error 3014/g)!.length, 1, `one message, not one per retry: ${r.stderr}`);
    assert.ok(!r.stderr.includes(lab.password), 'the password is not in the message');
    assertNoLeaks();
  });

  it("accepts the vCenter session's cookie (credType SESSIONID)", async () => {
    const cookie = vc.diskUrl({ file: await snapshotPath(s1) }, lab.datacenter).cookie;
    assert.ok(cookie);
    const src = await VddkSource.open(opts(config(), s1, await snapshotPath(s1), { credentials: { cookie } }));
    try { assert.equal(sha256(await readAll(src)), ref1); } finally { await src.close(); }
    assertNoLeaks();
  });

  it('raises NFC allocation failures as VDDK_NFC_RESOURCE (transient), and reads through them with retries', async () => {
    const p1 = await snapshotPath(s1);
    const src = await VddkSource.open(opts(config('nfc_alloc_fail=2\n'), s1, p1, { retry: { attempts: 1 } }));
    try {
      await assert.rejects(src.read(0, MiB), (e: unknown) => {
        assert.ok(isVddkNfcResourceError(e), String(e));
        assert.ok(e instanceof CodedError && e.transient);
        assert.match(String((e as Error).message), /VIX error 2\b/);
        let c: unknown = e;
        while (c && !(c instanceof CodedError && c.code === 'VDDK_NFC_RESOURCE')) c = (c as { cause?: unknown }).cause;
        assert.ok(c instanceof CodedError);
        assert.match(c.message, /NFC error 5 from server: Failed to allocate the requested 1048600 bytes/);
        assert.equal((c as unknown as { host: string }).host, new URL(lab.url).hostname);
        return true;
      });
    } finally { await src.close(); }
    const retried = await VddkSource.open(opts(config('nfc_alloc_fail=2\n'), s1, p1, { retry: { attempts: 4, baseDelayMs: 1 } }));
    try { assert.equal(sha256(await readAll(retried)), ref1); } finally { await retried.close(); }
    assert.equal(counters().nfc_errors, 2);
    // A host that takes at most 1 MiB a read: a 2 MiB read fails, the same read clamped to 1 MiB pieces does not.
    const big = await VddkSource.open(opts(config(`nfc_max_read=${MiB}\n`), s1, p1, { retry: { attempts: 1 } }));
    try { await assert.rejects(big.read(0, 2 * MiB), isVddkNfcResourceError); } finally { await big.close(); }
    const small = await VddkSource.open(opts(config(`nfc_max_read=${MiB}\n`), s1, p1, { maxReadSize: MiB }));
    try {
      assert.equal(small.maxReadSize, MiB);
      assert.ok((await small.read(0, 4 * MiB)).equals(await lab.read(VM, key, 0, 4 * MiB, s1)), 'a longer read is split at maxReadSize');
    } finally { await small.close(); }
    assertNoLeaks();
  });

  it('answers allocatedRanges from the NBD view (or undefined without QueryAllocatedBlocks)', async () => {
    const p1 = await snapshotPath(s1);
    const src = await VddkSource.open(opts(config(), s1, p1));
    try {
      const ranges = await src.allocatedRanges!();
      assert.ok(ranges && ranges.length > 0);
      const image = await lab.read(VM, key, 0, capacity, s1);
      let at = 0;
      for (const r of [...ranges, { offset: capacity, length: 0 }]) {
        assert.ok(image.subarray(at, r.offset).every((b) => b === 0), `unallocated [${at}, ${r.offset}) holds data`);
        at = r.offset + r.length;
      }
    } finally { await src.close(); }
    const none = await VddkSource.open(opts(config('no_query_blocks=1\n'), s1, p1));
    try { assert.equal(await none.allocatedRanges!(), undefined); } finally { await none.close(); }
    assertNoLeaks();
  });

  it('follows snapshot removal: a removed snapshot is gone, the next one reads by its renamed path', async () => {
    const ref2 = sha256(await lab.read(VM, key, 0, capacity, s2));
    const p1 = await snapshotPath(s1);
    await vc.removeSnapshot(moref, s1);
    const conf = config();
    await assert.rejects(VddkSource.open(opts(conf, s1, p1)), (e: unknown) => e instanceof UserError && e.code === 'VDDK_OBJECT_NOT_FOUND');
    const p2 = await snapshotPath(s2);
    const src = await VddkSource.open(opts(conf, s2, p2));
    try { assert.equal(sha256(await readAll(src)), ref2); } finally { await src.close(); }
    assertNoLeaks();
  });

  it('closes what is still open at Exit and reports it', async () => {
    const src = await VddkSource.open(opts(config(), s2, await snapshotPath(s2)));
    await src.read(0, 4096);
    assert.equal(counters().handles, 1);
    shutdownVddk();
    assertNoLeaks();
  });
});
