import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import { labFixture, connect, folderRead, viewRead } from './helpers.ts';
import type { Lab } from '../../lab/lab.ts';
import { methods, parseChangeId, VimFault, type VCenter, type Area } from '../../src/vsphere/index.ts';
import { planDiskSync } from '../../src/engine/sync-plan.ts';
import { vcenterService } from '../../src/cli/wiring.ts';

let fx: Awaited<ReturnType<typeof labFixture>>;
let lab: Lab;
let vc: VCenter;
const MB = 1 << 20;
/**
 * The bound these tests state for false positives: vCenter reports at most each write rounded out to
 * 64 KiB boundaries (ESXi tracks blocks of at least that size; the lab tracks exactly 64 KiB). Areas
 * may come in any size and alignment (runs of blocks, or one whole-disk area on some storage).
 */
const GRAIN = 64 << 10;

before(async () => { fx = await labFixture({ vms: 3, diskMb: 288 }); lab = fx.lab; vc = await connect(lab); });
after(async () => { await vc?.close(); await fx?.cleanup(); });

/** Deterministic PRNG so a failure replays. */
function rng(seed: number) {
  let x = seed >>> 0;
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x / 2 ** 32; };
}

/** The writes rounded out to `bs` boundaries, merged: the most a change report may hold. */
function blockAreas(writes: { offset: number; length: number }[], bs: number, cap: number): Area[] {
  const blocks = new Set<number>();
  for (const w of writes) for (let b = Math.floor(w.offset / bs); b * bs < w.offset + w.length; b++) blocks.add(b);
  const out: Area[] = [];
  for (const b of [...blocks].sort((a, c) => a - c)) {
    const last = out[out.length - 1];
    const end = Math.min((b + 1) * bs, cap);
    if (last && last.offset + last.length === b * bs) last.length = end - last.offset;
    else out.push({ offset: b * bs, length: end - b * bs });
  }
  return out;
}

const bytesOf = (areas: Area[]) => areas.reduce((n, a) => n + a.length, 0);

/** Every reported byte lies inside `bound` (no false positive beyond it); areas are sorted and disjoint. */
function assertWithin(areas: Area[], bound: Area[], what: string): void {
  for (const [i, a] of areas.entries()) {
    if (i > 0) assert.ok(areas[i - 1]!.offset + areas[i - 1]!.length <= a.offset, `${what}: areas sorted and disjoint at ${a.offset}`);
    assert.ok(covered(bound, a.offset, a.length), `${what}: area ${a.offset}+${a.length} lies within the writes rounded out to ${GRAIN} B`);
  }
}

function covered(areas: Area[], off: number, len: number): boolean {
  let pos = off;
  for (const a of areas) {
    if (a.offset <= pos && pos < a.offset + a.length) pos = a.offset + a.length;
    if (pos >= off + len) return true;
  }
  return pos >= off + len;
}

function sha256Stream(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    const h = createHash('sha256');
    p.stdout.on('data', (b) => h.update(b));
    p.on('close', (code) => (code === 0 ? resolve(h.digest('hex')) : reject(new Error(`${cmd} exited ${code}`))));
  });
}

test('changed areas between two snapshots cover every written byte; "*" is the allocated areas; snapshots keep their data', async () => {
  const vm = await vc.vm('vm-0001');
  const key = 2000;
  const cap = vm.disks[0]!.capacity;
  await vc.enableCbt(vm.ref);

  const s1 = await vc.createSnapshot(vm.ref, 'vmlift-c1', { quiesce: false });
  const id1 = (await vc.snapshotDisks(s1.ref)).find((d) => d.key === key)!.changeId!;
  assert.ok(parseChangeId(id1), `changeId ${id1} is <uuid>/<seq>`);
  assert.match(id1, /^[0-9a-f]{2}( [0-9a-f]{2}){7}-[0-9a-f]{2}( [0-9a-f]{2}){7}\/\d+$/, 'vCenter\'s changeId form');

  // "*" = exactly the regions the lab wrote at creation (first MiB, 256 KiB in the middle, the last 64 KiB): no holes reported
  const all = await vc.changedAreas(vm.ref, s1.ref, key, '*', cap);
  assert.deepEqual(all.areas, [{ offset: 0, length: MB }, { offset: cap / 2, length: 256 << 10 }, { offset: cap - (64 << 10), length: 64 << 10 }]);
  await vc.removeSnapshot(vm.ref, s1.ref);

  const r = rng(42);
  const writes: { offset: number; length: number }[] = [];
  for (let i = 0; i < 40; i++) {
    const length = 1 + Math.floor(r() * 300_000);
    const offset = Math.floor(r() * (cap - length));
    writes.push({ offset, length });
    await lab.write('vm-0001', key, offset, Buffer.alloc(length, i + 1));
  }
  writes.push({ offset: GRAIN - 1, length: 2 }); // straddles a block boundary
  await lab.write('vm-0001', key, GRAIN - 1, Buffer.from([7, 7]));

  const s2 = await vc.createSnapshot(vm.ref, 'vmlift-c2', { quiesce: false });
  const d2 = (await vc.snapshotDisks(s2.ref)).find((d) => d.key === key)!;
  const id2 = d2.changeId!;
  assert.equal(parseChangeId(id2)!.uuid, parseChangeId(id1)!.uuid);
  assert.ok(parseChangeId(id2)!.seq > parseChangeId(id1)!.seq);
  assert.deepEqual(planDiskSync(id1, id2, true), { mode: 'incremental', sinceChangeId: id1 }, 'same CBT epoch: incremental');

  const q = await vc.changedAreas(vm.ref, s2.ref, key, id1, cap);
  for (const w of writes) assert.ok(covered(q.areas, w.offset, w.length), `write ${w.offset}+${w.length} is covered`);
  // False positives: at most the rest of each touched 64 KiB block (< 64 KiB on each side of a written range).
  const bound = blockAreas(writes, GRAIN, cap);
  assertWithin(q.areas, bound, 'since id1');
  const written = writes.reduce((n, w) => n + w.length, 0);
  assert.ok(q.bytes <= bytesOf(bound) && q.bytes <= written + writes.length * 2 * (GRAIN - 1), `reported ${q.bytes} B for ${written} B written`);

  // A guest write after the snapshot goes past it: the snapshot (read through /folder) keeps the old bytes.
  const at = 100 * MB + 12345;
  const oldBytes = await lab.read('vm-0001', key, at, 4096);
  const newBytes = Buffer.alloc(4096, 0xab);
  await lab.write('vm-0001', key, at, newBytes);
  assert.deepEqual(await lab.read('vm-0001', key, at, 4096), newBytes, 'the live disk has the write');
  const url2 = vc.diskUrl(d2, lab.datacenter);
  const viaFolder = await folderRead(lab, url2.url, url2.cookie, at, 4096);
  assert.equal(viaFolder.status, 206);
  assert.deepEqual(viaFolder.body, oldBytes, 'the snapshot shows the data as of the snapshot');
  assert.deepEqual((await vc.changedAreas(vm.ref, s2.ref, key, id1, cap)).areas, q.areas, 'the snapshot\'s changes do not grow');
  const firstWrite = writes[0]!;
  assert.deepEqual((await folderRead(lab, url2.url, url2.cookie, firstWrite.offset, 16)).body, Buffer.alloc(16, 1), 'earlier writes are in the snapshot');

  // A second snapshot on top is its own delta file: no flat file on the datastore, its own view
  // in the lab (what VDDK and NBD read); NBD exports serve each view.
  const s3 = await vc.createSnapshot(vm.ref, 'vmlift-c3', { quiesce: false });
  const d3 = (await vc.snapshotDisks(s3.ref)).find((d) => d.key === key)!;
  assert.match(d3.file, /vm-0001-000001\.vmdk$/);
  await lab.write('vm-0001', key, at, Buffer.alloc(4096, 0xcd));
  const url3 = vc.diskUrl(d3, lab.datacenter);
  assert.equal((await folderRead(lab, url3.url, url3.cookie, at, 4096)).status, 404, 'a delta has no -flat.vmdk');
  assert.deepEqual((await viewRead(lab, 'vm-0001', key, s3.ref, at, 4096)).body, newBytes);
  assert.deepEqual((await folderRead(lab, url2.url, url2.cookie, at, 4096)).body, oldBytes);
  const q3 = await vc.changedAreas(vm.ref, s3.ref, key, id2, cap);
  assert.ok(covered(q3.areas, at, 4096));
  assertWithin(q3.areas, blockAreas([{ offset: at, length: 4096 }], GRAIN, cap), 'since id2');

  const [nbd2, nbd3] = [await lab.nbdExport('vm-0001', s2.ref, key), await lab.nbdExport('vm-0001', s3.ref, key)];
  const full = async (read: (off: number, len: number) => Promise<{ body: Buffer }>) => {
    const h = createHash('sha256');
    for (let off = 0; off < cap; off += 32 * MB) h.update((await read(off, Math.min(32 * MB, cap - off))).body);
    return h.digest('hex');
  };
  assert.equal(await sha256Stream('nbdcopy', [nbd2.uri, '-']), await full((o, n) => folderRead(lab, url2.url, url2.cookie, o, n)), 'NBD export of the first snapshot = its /folder data (the base flat file)');
  assert.equal(await sha256Stream('nbdcopy', [nbd3.uri, '-']), await full((o, n) => viewRead(lab, 'vm-0001', key, s3.ref, o, n)), 'NBD export of the second snapshot = the lab\'s view of it');

  await vc.removeSnapshot(vm.ref, s2.ref);
  await vc.removeSnapshot(vm.ref, s3.ref);
  assert.deepEqual(await lab.read('vm-0001', key, at, 4096), Buffer.alloc(4096, 0xcd), 'consolidation keeps the live data');
  assert.equal((await vc.vm(vm.ref)).snapshots.length, 0);

  // CBT reset: the next snapshot carries a new UUID; the old changeId is refused.
  await lab.resetCbt('vm-0001', key);
  const s4 = await vc.createSnapshot(vm.ref, 'vmlift-c4', { quiesce: false });
  const id4 = (await vc.snapshotDisks(s4.ref)).find((d) => d.key === key)!.changeId!;
  assert.match((planDiskSync(id2, id4, true) as { reason: string }).reason, /CBT was reset/);
  await assert.rejects(vc.changedAreas(vm.ref, s4.ref, key, id2, cap), (e: Error & { code?: string }) => e.code === 'VC_CHANGE_ID_INVALID' && /CBT was reset/.test(e.message));
  assert.ok((await vc.changedAreas(vm.ref, s4.ref, key, '*', cap)).areas.length > 0);

  // vCenter's faults: startOffset at the capacity, an unknown changeId, a malformed one.
  await assert.rejects(methods.queryChangedDiskAreas(vc.session, { type: 'VirtualMachine', value: vm.ref }, { type: 'VirtualMachineSnapshot', value: s4.ref }, key, cap, id4),
    (e: unknown) => e instanceof VimFault && e.type === 'InvalidArgument' && e.detail.invalidProperty === 'startOffset');
  await assert.rejects(vc.changedAreas(vm.ref, s4.ref, key, '52 aa bb/3', cap), (e: Error & { code?: string }) => e.code === 'VC_CHANGE_ID_INVALID');
  await assert.rejects(vc.changedAreas(vm.ref, s4.ref, key, 'not-a-change-id', cap), (e: Error & { code?: string }) => e.code === 'VC_CHANGE_ID');
  await vc.removeSnapshot(vm.ref, s4.ref);
});

test('CBT off: no changeId on the snapshot, and QueryChangedDiskAreas says so', async () => {
  const vm = await vc.vm('vm-0002');
  const s = await vc.createSnapshot(vm.ref, 'vmlift-off', { quiesce: false });
  try {
    assert.equal((await vc.snapshotDisks(s.ref))[0]!.changeId, null);
    await assert.rejects(vc.changedAreas(vm.ref, s.ref, 2000, '*'), (e: Error & { code?: string; fix?: string }) =>
      e.code === 'VC_CBT_OFF' && /change tracking is not active/.test(e.message) && /vmlift vc cbt enable/.test(e.fix ?? ''));
  } finally {
    await vc.removeSnapshot(vm.ref, s.ref);
  }
});

test('more than 2,000 changed areas come back in pages and are all collected', async () => {
  const vm = await vc.vm('vm-0003');
  const cap = vm.disks[0]!.capacity;
  await vc.enableCbt(vm.ref);
  const s1 = await vc.createSnapshot(vm.ref, 'vmlift-p1', { quiesce: false });
  const id1 = (await vc.snapshotDisks(s1.ref))[0]!.changeId!;
  await vc.removeSnapshot(vm.ref, s1.ref);
  const n = 2100;
  const offsets = Array.from({ length: n }, (_, i) => (2 * i + 1) * GRAIN + 17);
  for (let i = 0; i < n; i += 32) {
    await Promise.all(offsets.slice(i, i + 32).map((o) => lab.write('vm-0003', 2000, o, Buffer.from([1]))));
  }
  const s2 = await vc.createSnapshot(vm.ref, 'vmlift-p2', { quiesce: false });
  const q = await vc.changedAreas(vm.ref, s2.ref, 2000, id1, cap);
  // Every write is in an area, none is lost or repeated at a page boundary, and no area goes beyond the bound.
  for (const o of offsets) assert.ok(covered(q.areas, o, 1), `write at ${o} is covered`);
  assertWithin(q.areas, blockAreas(offsets.map((o) => ({ offset: o, length: 1 })), GRAIN, cap), 'paged');
  assert.ok(q.areas.length > 2000, `${q.areas.length} areas`);
  assert.ok(q.calls > 1, `${q.calls} replies: vCenter pages at about 2,000 areas`);
  await vc.removeSnapshot(vm.ref, s2.ref);
});

test('engine port: one docs/design.md cycle over a two-disk VM', async () => {
  const ctl = vcenterService(vc);
  const ref = lab.vm('two-disks').moref;
  assert.ok((await ctl.preflight(ref)).every((c) => c.ok));
  assert.match(await ctl.hostOf(ref), /^host-\d+$/);
  assert.equal((await ctl.ensureCbt(ref)).changed, true);
  assert.equal((await ctl.ensureCbt(ref)).changed, false);
  await vc.createSnapshot(ref, 'vmlift-crashed-cycle', { quiesce: false });
  assert.equal(await ctl.sweepSnapshots(ref, 'vmlift-'), 1);

  const s1 = await ctl.createSnapshot(ref, 'vmlift-cycle-1', { quiesce: true });
  const d1 = await ctl.snapshotDisks(ref, s1);
  assert.deepEqual(d1.map((d) => [d.key, d.capacity]), [[2000, 288 * MB], [2016, 144 * MB]]);
  for (const d of d1) assert.ok(d.changeId && parseChangeId(d.changeId));
  for (const d of d1) assert.ok((await ctl.changedAreas(ref, s1, d, '*')).length > 0);
  await ctl.removeSnapshot(ref, s1);

  await lab.write('two-disks', 2016, 5 * MB, Buffer.alloc(10, 9));
  const s2 = await ctl.createSnapshot(ref, 'vmlift-cycle-2', { quiesce: true });
  const d2 = await ctl.snapshotDisks(ref, s2);
  assert.deepEqual(await ctl.changedAreas(ref, s2, d2[0]!, d1[0]!.changeId!), [], 'untouched disk: nothing to send');
  const areas = await ctl.changedAreas(ref, s2, d2[1]!, d1[1]!.changeId!);
  assert.ok(covered(areas.map((a) => ({ offset: a.offset, length: a.length })), 5 * MB, 10));
  assertWithin(areas, blockAreas([{ offset: 5 * MB, length: 10 }], GRAIN, 144 * MB), 'engine port');
  await ctl.removeSnapshot(ref, s2);
  assert.equal((await vc.vm(ref)).snapshots.length, 0);
});
