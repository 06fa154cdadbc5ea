/**
 * The lab's real guest: guest-debian boots from a Debian disk built by lab/guest/build.sh, and
 * `vmlift lab guest-write` puts a file into its filesystem through the live disk, so the blocks
 * it changes are the ones QueryChangedDiskAreas reports and the next snapshot holds the file.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { open, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { labFixture, connect, vmlift } from './helpers.ts';
import type { Lab } from '../../lab/lab.ts';
import { guestfsEnv } from '../../lab/guest.ts';
import type { VCenter, Area } from '../../src/vsphere/index.ts';

const run = promisify(execFile);
let fx: Awaited<ReturnType<typeof labFixture>>;
let lab: Lab;
let vc: VCenter;
let tmp: string;

before(async () => {
  fx = await labFixture({ vms: 1, guest: true });
  lab = fx.lab; vc = await connect(lab);
  tmp = await mkdtemp(join(tmpdir(), 'vmlift-guest-write-'));
});
after(async () => { await vc?.close(); await fx?.cleanup(); if (tmp) await rm(tmp, { recursive: true, force: true }); });

function covered(areas: Area[], off: number, len: number): boolean {
  let pos = off;
  for (const a of areas) if (a.offset <= pos && pos < a.offset + a.length) pos = a.offset + a.length;
  return pos >= off + len;
}

test('guest-write: a file written into the guest reaches the disk as changed blocks that CBT reports, and the next snapshot holds it', async () => {
  const vm = await vc.vm('guest-debian');
  assert.equal(vm.disks.length, 1);
  const key = vm.disks[0]!.key;
  const cap = vm.disks[0]!.capacity;
  assert.equal(cap, lab.vm('guest-debian').disks[0]!.capacity);
  await vc.enableCbt(vm.ref);
  const s1 = await vc.createSnapshot(vm.ref, 'vmlift-c1', { quiesce: false });
  const id1 = (await vc.snapshotDisks(s1.ref)).find((d) => d.key === key)!.changeId!;

  const marker = `cycle-1 marker ${Date.now()}\n`;
  const w = await vmlift(['lab', 'guest-write', '--dir', fx.dir, 'guest-debian', '--path', '/var/lib/app/data', '--content', marker, '--json']);
  assert.equal(w.code, 0, w.stderr);
  assert.deepEqual(JSON.parse(w.stdout), { vm: 'guest-debian', path: '/var/lib/app/data', bytes: marker.length });

  const s2 = await vc.createSnapshot(vm.ref, 'vmlift-c2', { quiesce: false });
  const q = await vc.changedAreas(vm.ref, s2.ref, key, id1, cap);
  assert.ok(q.bytes > 0, 'the file write changed blocks');
  assert.ok(q.bytes < 64 << 20, `a small file changes little of the disk (reported ${q.bytes} B)`);

  // Every block that differs between the two snapshots is reported (the base file is frozen under s1).
  const { uri } = await lab.nbdExport('guest-debian', s2.ref, key);
  const s2raw = join(tmp, 's2.raw');
  await run('nbdcopy', [uri, s2raw]);
  const a = await open(lab.vm('guest-debian').disks[0]!.flatPath, 'r');
  const b = await open(s2raw, 'r');
  const bs = lab.cbtBlockSize;
  const ba = Buffer.alloc(bs), bb = Buffer.alloc(bs);
  let differing = 0;
  try {
    for (let off = 0; off < cap; off += bs) {
      await a.read(ba, 0, bs, off); await b.read(bb, 0, bs, off);
      if (!ba.equals(bb)) { differing++; assert.ok(covered(q.areas, off, bs), `changed block at ${off} is reported`); }
    }
  } finally { await a.close(); await b.close(); }
  assert.ok(differing > 0, 'the snapshots differ');

  // The snapshot's view holds the file, as libguestfs reads it.
  const { stdout } = await run('virt-cat', ['--format=raw', '-a', uri, '/var/lib/app/data'], { env: guestfsEnv() });
  assert.equal(stdout, marker);
  // ...and the first snapshot does not.
  const { uri: uri1 } = await lab.nbdExport('guest-debian', s1.ref, key);
  await assert.rejects(run('virt-cat', ['--format=raw', '-a', uri1, '/var/lib/app/data'], { env: guestfsEnv() }));
});

test('guest-write to an unknown VM fails with a clear error and a non-zero exit', async () => {
  const r = await vmlift(['lab', 'guest-write', '--dir', fx.dir, 'no-such-vm', '--path', '/x', '--content', 'y']);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /LAB_GUEST_WRITE|no VM no-such-vm/);
});
