import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { startTestReceiver, sendDisk, sha256, readDisk, freePort, makeDisk } from './helpers.ts';
import { Sender } from '../../src/transfer/sender.ts';
import { openImageStore } from '../../src/store/index.ts';

const MiB = 1 << 20;
const children = new Set<ChildProcess>();
after(() => { for (const c of children) c.kill('SIGKILL'); });

test('a dropped data connection resumes without re-sending what the receiver holds', async (tt) => {
  const t = await startTestReceiver();
  try {
    const data = randomBytes(48 * MiB);
    const window = 16 * MiB;
    const s = await t.sender('drop-a', { compression: 0, windowBytes: window });
    const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: data.length }] });
    // drop right after a frame went into the socket: that frame (at least) is lost in flight
    const dropAt = [12 * MiB, 30 * MiB];
    c.on('progress', (p: { wireBytes: number }) => {
      if (dropAt.length && p.wireBytes >= dropAt[0]!) { dropAt.shift(); c.dropConnection(); }
    });
    for (let off = 0; off < data.length; off += MiB) await c.send(0, off, data.subarray(off, off + MiB));
    const img = await c.commit();
    const st = c.stats();
    tt.diagnostic(`dropped twice: re-sent ${st.resentBytes} of ${st.wireBytes} wire bytes`);
    assert.equal(st.reconnects, 2);
    assert.ok(st.resentBytes >= MiB, 'the frames lost in flight were sent again');
    assert.ok(st.resentBytes <= 2 * window, `re-sent ${st.resentBytes} bytes, bound is the window per reconnect`);
    assert.ok(st.wireBytes - st.resentBytes < data.length + MiB, 'each extent went out once apart from the re-sends');
    assert.equal(sha256(await readDisk(t.rx, 'drop-a', img.imageId, 0, data.length)), sha256(data));
    await s.close();
  } finally { await t.close(); }
});

test('a sender restarted mid-cycle skips what the receiver already holds', async () => {
  const t = await startTestReceiver();
  try {
    const data = makeDisk(16 * MiB, 11);
    const disks = [{ disk: 0, capacity: data.length }];
    const s1 = await t.sender('restart-a');
    const c1 = await s1.beginCycle({ cycleId: 'c1', disks });
    await sendDisk(c1, 0, data.subarray(0, 8 * MiB));
    await c1.flush();
    for (let off = 8 * MiB; off < 10 * MiB; off += MiB) await c1.send(0, off, data.subarray(off, off + MiB)); // not waited for
    await s1.close(); // as if the agent died: the cycle stays open on the receiver

    const s2 = await t.sender('restart-a'); // reuses the credential file
    const c2 = await s2.beginCycle({ cycleId: 'c1', disks });
    const heldBytes = c2.held.reduce((n, h) => n + h.ranges.reduce((m, r) => m + r.length, 0), 0);
    assert.ok(heldBytes >= 8 * MiB, `receiver holds ${heldBytes} bytes of the first run`);
    await sendDisk(c2, 0, data); // everything again: held pieces are skipped
    const st = c2.stats();
    assert.ok(st.skippedBytes >= 8 * MiB, `skipped ${st.skippedBytes}`);
    assert.ok(st.payloadBytes <= data.length - 8 * MiB);
    const img = await c2.commit();
    assert.equal(sha256(await readDisk(t.rx, 'restart-a', img.imageId, 0, data.length)), sha256(data));
    await s2.close();
  } finally { await t.close(); }
});

async function spawnReceiver(dataDir: string, controlPort: number, dataPort: number): Promise<{ child: ChildProcess; facts: { fingerprint: string; activationCode: { code: string } | null } }> {
  const child = spawn(join(process.cwd(), 'bin/vmlift'), ['receiver', 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1',
    '--control-port', String(controlPort), '--data-port', String(dataPort), '--json'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMLIFT_LOG_LEVEL: 'warn' } });
  children.add(child);
  child.on('exit', () => children.delete(child));
  let err = '';
  child.stderr!.on('data', (d) => { err += String(d); });
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve);
    child.once('exit', (code) => reject(new Error(`receiver exited ${code}: ${err}`)));
  });
  return { child, facts: JSON.parse(line) };
}

test('receiver killed -9 mid-cycle and restarted: the cycle completes bit-identical', async (tt) => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-kill-'));
  try {
    const controlPort = await freePort();
    const dataPort = await freePort();
    const dataDir = join(dir, 'rx');
    let rx = await spawnReceiver(dataDir, controlPort, dataPort);
    const data = randomBytes(64 * MiB);
    const window = 16 * MiB;
    const s = await Sender.connect({ receiver: `127.0.0.1:${controlPort}`, fingerprint: rx.facts.fingerprint, credentialFile: join(dir, 'cred'),
      activationCode: rx.facts.activationCode!.code, sourceId: 'kill-a', compression: 0, bandwidthMbps: 0, checksum: true, windowBytes: window });
    const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: data.length }] });
    let restarted: Promise<unknown> | null = null;
    for (let off = 0; off < data.length; off += MiB) {
      await c.send(0, off, data.subarray(off, off + MiB));
      if (off === 28 * MiB) {
        rx.child.kill('SIGKILL');
        await new Promise((r) => rx.child.once('exit', r));
        restarted = spawnReceiver(dataDir, controlPort, dataPort).then((r) => { rx = r; });
      }
    }
    await restarted;
    // and once more once everything is acknowledged, just before the commit: the commit reopens the cycle
    await c.flush();
    rx.child.kill('SIGKILL');
    await new Promise((r) => rx.child.once('exit', r));
    rx = await spawnReceiver(dataDir, controlPort, dataPort);
    const img = await c.commit({ sourceDigests: [{ disk: 0, sha256: sha256(data) }] });
    const st = c.stats();
    tt.diagnostic(`receiver killed: ${st.reconnects} reconnect attempts, re-sent ${st.resentBytes} of ${st.wireBytes} wire bytes`);
    assert.ok(st.reconnects >= 1);
    assert.ok(st.resentBytes <= window + MiB, `re-sent ${st.resentBytes} bytes; bound: window ${window}`);
    await s.close();
    rx.child.kill('SIGTERM');
    await new Promise((r) => rx.child.once('exit', r));
    const store = await openImageStore(join(dataDir, 'store'));
    try {
      const out = join(dir, 'export.raw');
      await store.export('kill-a', img.imageId, 0, 'raw', out);
      const { readFile } = await import('node:fs/promises');
      assert.equal(sha256(await readFile(out)), sha256(data));
    } finally { await store.close(); }
  } finally { await rm(dir, { recursive: true, force: true }); }
});
