/** The open-disks limit as a source wrapper: a slot is held from open until close, and given back when open fails. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { LimitedDiskOpener } from '../../src/engine/limits.ts';
import type { DiskOpener, SnapshotDisk } from '../../src/engine/services.ts';
import { LocalSource } from '../../src/source/local/index.ts';
import type { BlockSource } from '../../src/source/types.ts';
import { wrapSource } from '../../src/source/wrap.ts';

const dir = mkdtempSync(path.join(tmpdir(), 'vmlift-limits-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const snapshot = { ref: 'snapshot-1', name: 'vmlift-1' };
const disk = (key: number): SnapshotDisk => ({ key, label: `disk ${key}`, capacity: 1 << 20, changeId: null, uuid: null });
for (const k of [1, 2, 3]) writeFileSync(path.join(dir, `d${k}.img`), Buffer.alloc(1 << 20, k));

/** Opens the local image of each disk key; `fail` makes the open (or the close) of a key throw. */
function localDisks(fail: { open?: Set<number>; close?: Set<number> } = {}): DiskOpener {
  return {
    async open(_vm, _snap, d) {
      if (fail.open?.has(d.key)) throw new Error(`cannot open disk ${d.key}`);
      const s = await LocalSource.open(path.join(dir, `d${d.key}.img`));
      if (!fail.close?.has(d.key)) return s;
      return wrapSource(s, { close: async () => { await s.close(); throw new Error(`close of disk ${d.key} failed`); } });
    },
  };
}

const settled = async (p: Promise<unknown>): Promise<boolean> => {
  let done = false;
  void p.then(() => { done = true; }, () => { done = true; });
  await new Promise((r) => setTimeout(r, 50));
  return done;
};

describe('LimitedDiskOpener', () => {
  it('holds a slot per host from open until close, and the source reads and closes as the inner one', async () => {
    const limited = new LimitedDiskOpener(localDisks(), async (vm) => (vm === 'vm-b' ? 'esx2' : 'esx1'), { perHost: 1, overall: 2 });
    const a = await limited.open('vm-a', snapshot, disk(1));
    assert.equal(a.transport, 'local');
    assert.ok((await a.read(4096, 16)).equals(Buffer.alloc(16, 1)));
    assert.ok(a.extents, 'optional members pass through');
    assert.deepEqual(limited.usage(), { esx1: 1 });
    const other = await limited.open('vm-b', snapshot, disk(2));
    const waiting = limited.open('vm-a', snapshot, disk(3));
    assert.equal(await settled(waiting), false, 'a second disk of esx1 waits for its slot');
    await a.close();
    const c = await waiting;
    assert.ok((await c.read(0, 16)).equals(Buffer.alloc(16, 3)));
    assert.deepEqual(limited.usage(), { esx1: 1, esx2: 1 });
    await Promise.all([c.close(), other.close()]);
    assert.deepEqual(limited.usage(), { esx1: 0, esx2: 0 });
    await a.close();
    assert.deepEqual(limited.usage(), { esx1: 0, esx2: 0 }, 'closing twice gives back nothing more');
  });

  it('gives the slot back when the open fails, and when the inner close throws', async () => {
    const limited = new LimitedDiskOpener(localDisks({ open: new Set([1]), close: new Set([2]) }), async () => 'esx1', { perHost: 1, overall: 1 });
    await assert.rejects(limited.open('vm-a', snapshot, disk(1)), /cannot open disk 1/);
    assert.deepEqual(limited.usage(), { esx1: 0 });
    const b = await limited.open('vm-a', snapshot, disk(2));
    await assert.rejects(b.close(), /close of disk 2 failed/);
    assert.deepEqual(limited.usage(), { esx1: 0 });
    const c = limited.open('vm-a', snapshot, disk(3));
    assert.equal(await settled(c), true, 'the slot is free again');
    await (await c).close();
  });

  it('bounds the disks open overall across hosts', async () => {
    const limited = new LimitedDiskOpener(localDisks(), async (vm) => vm, { perHost: 4, overall: 1 });
    const a: BlockSource = await limited.open('vm-a', snapshot, disk(1));
    const b = limited.open('vm-b', snapshot, disk(2));
    assert.equal(await settled(b), false);
    await a.close();
    await (await b).close();
  });
});

describe('LimitedDiskOpener under NFC resource errors', () => {
  const nfcError = () => Object.assign(new Error('read failed'), { code: 'SOURCE_READ', cause: Object.assign(new Error('NFC error 5: failed to allocate'), { code: 'VDDK_NFC_RESOURCE' }) });

  /** Local disks whose reads fail with an NFC resource error `failures` times in all. */
  function flaky(failures: { left: number }, failOpen = 0): DiskOpener {
    let opensToFail = failOpen;
    return {
      async open(vm, snap, d) {
        if (opensToFail > 0) { opensToFail--; throw nfcError(); }
        const s = await localDisks().open(vm, snap, d);
        return wrapSource(s, {
          read: async (o, l) => { if (failures.left > 0) { failures.left--; throw nfcError(); } return s.read(o, l); },
        });
      },
    };
  }

  it('lowers the host\'s disk limit, backs off and goes on; the limit climbs back after the recovery time', async () => {
    const failures = { left: 2 };
    const limited = new LimitedDiskOpener(flaky(failures), async () => 'esx1', { perHost: 3, overall: 8 },
      { nfc: { backoffMs: 10, maxBackoffMs: 20, recoveryMs: 150, maxRetries: 4 } });
    const a = await limited.open('vm-a', snapshot, disk(1));
    const b = await limited.open('vm-a', snapshot, disk(2));
    assert.deepEqual(limited.hostLimits(), { esx1: 3 });
    assert.ok((await a.read(0, 16)).equals(Buffer.alloc(16, 1)), 'the read succeeds after the backoff');
    assert.equal(failures.left, 0);
    assert.deepEqual(limited.hostLimits(), { esx1: 1 }, 'two errors with two disks open: 2 → 1 → 1');
    await b.close();
    const c = limited.open('vm-a', snapshot, disk(3));
    assert.equal(await settled(c), false, 'with the limit lowered to 1, a new disk waits while one is open');
    await a.close();
    await (await c).close();
    await new Promise((r) => setTimeout(r, 400));
    assert.deepEqual(limited.hostLimits(), { esx1: 3 }, 'back to the configured limit, one step per quiet recovery period');
    limited.close();
  });

  it('retries an open that hits an NFC resource error; other errors and exhausted retries go up unchanged', async () => {
    const limited = new LimitedDiskOpener(flaky({ left: 0 }, 1), async () => 'esx1', { perHost: 2, overall: 2 }, { nfc: { backoffMs: 5, recoveryMs: 60_000 } });
    const a = await limited.open('vm-a', snapshot, disk(1));
    assert.deepEqual(limited.hostLimits(), { esx1: 1 });
    await a.close();
    limited.close();
    const stubborn = new LimitedDiskOpener(flaky({ left: 100 }), async () => 'esx2', { perHost: 2, overall: 2 }, { nfc: { backoffMs: 1, maxRetries: 2, recoveryMs: 60_000 } });
    const s = await stubborn.open('vm-a', snapshot, disk(1));
    await assert.rejects(s.read(0, 16), (e: unknown) => (e as { cause?: { code?: string } }).cause?.code === 'VDDK_NFC_RESOURCE');
    await s.close();
    assert.deepEqual(stubborn.usage(), { esx2: 0 });
    stubborn.close();
    const plain = new LimitedDiskOpener(localDisks({ open: new Set([1]) }), async () => 'esx3', { perHost: 2, overall: 2 });
    await assert.rejects(plain.open('vm-a', snapshot, disk(1)), /cannot open disk 1/);
    assert.deepEqual(plain.hostLimits(), { esx3: 2 }, 'an error that is not NFC\'s leaves the limit alone');
  });
});
