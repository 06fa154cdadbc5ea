// A receiver killed (kill -9, through the crash points of the store's commit) while it commits a
// cycle with checksum on: a cycle whose stored bytes do not match the source digests is never
// published nor accepted by the sender's retry; a matching one is, bit-identical.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { freePort, sha256 } from '../transfer/helpers.ts';
import { Sender } from '../../src/transfer/sender.ts';
import { RemoteError } from '../../src/transfer/control-client.ts';
import { treeRootOf } from '../../src/transfer/digest-tree.ts';
import { openImageStore } from '../../src/store/index.ts';

const MiB = 1 << 20;
const children = new Set<ChildProcess>();
after(() => { for (const c of children) c.kill('SIGKILL'); });

interface Rx { child: ChildProcess; exited: Promise<unknown>; facts: { fingerprint: string; activationCode: { code: string } | null } }

async function spawnReceiver(dataDir: string, controlPort: number, dataPort: number, crashAt?: string): Promise<Rx> {
  const env: NodeJS.ProcessEnv = { ...process.env, VMLIFT_LOG_LEVEL: 'warn' };
  if (crashAt) env.VMLIFT_TEST_CRASH_AT = crashAt; else delete env.VMLIFT_TEST_CRASH_AT;
  const child = spawn(join(process.cwd(), 'bin/vmlift'), ['receiver', 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1',
    '--control-port', String(controlPort), '--data-port', String(dataPort), '--json'], { stdio: ['ignore', 'pipe', 'pipe'], env });
  children.add(child);
  const exited = new Promise((r) => child.once('exit', r));
  void exited.then(() => children.delete(child));
  let err = '';
  child.stderr!.on('data', (d) => { err += String(d); });
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve);
    child.once('exit', (code) => reject(new Error(`receiver exited ${code}: ${err}`)));
  });
  return { child, exited, facts: JSON.parse(line) };
}

const treeOf = async (disk: Buffer) => ({ ranges: [{ offset: 0, length: disk.length }], root: await treeRootOf([{ offset: 0, length: disk.length }], async (o, l) => disk.subarray(o, o + l)) });

for (const point of ['store:commit-flushed', 'store:commit-verified', 'store:commit-published']) {
  test(`receiver killed at ${point}: a corrupt cycle is never published nor accepted, a good one is (bit-identical)`, async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmlift-vcrash-'));
    try {
      const controlPort = await freePort();
      const dataPort = await freePort();
      const dataDir = join(dir, 'rx');
      let rx = await spawnReceiver(dataDir, controlPort, dataPort, point);
      const code = rx.facts.activationCode!.code;
      const fingerprint = rx.facts.fingerprint;
      let crashes = 0;
      // once the receiver dies at the crash point, it comes back without it (as after a power cut)
      const watch = (r: Rx): void => {
        void r.exited.then(async () => {
          if (r.child.signalCode !== 'SIGKILL') return;
          crashes++;
          rx = await spawnReceiver(dataDir, controlPort, dataPort);
        });
      };
      watch(rx);
      const data = randomBytes(8 * MiB);
      const corrupt = Buffer.from(data);
      corrupt[5 * MiB + 7] ^= 0x40;
      const connect = (sourceId: string) => Sender.connect({ receiver: `127.0.0.1:${controlPort}`, fingerprint, credentialFile: join(dir, `${sourceId}.cred`),
        activationCode: code, sourceId, compression: 0, bandwidthMbps: 0, checksum: true, resumeTimeoutMs: 60_000 });
      const disks = [{ disk: 0, capacity: data.length }];

      // the source read `corrupt`, the receiver stores `data`: what a bad disk or a bad buffer would do
      const bad = await connect('bad');
      const c1 = await bad.beginCycle({ cycleId: 'c1', disks });
      for (let off = 0; off < data.length; off += MiB) await c1.send(0, off, data.subarray(off, off + MiB));
      await assert.rejects(c1.commit({ sourceDigests: [{ disk: 0, tree: await treeOf(corrupt) }] }), (e: unknown) => {
        assert.ok(e instanceof RemoteError, String(e));
        assert.equal(e.code, 'CHECKSUM_MISMATCH');
        return true;
      });
      assert.deepEqual(await bad.listImages(), [], 'nothing published for the corrupt cycle');
      await bad.close();
      const crashedOnBad = crashes;
      if (point === 'store:commit-flushed') assert.equal(crashedOnBad, 1, 'the receiver was killed before it verified');
      else assert.equal(crashedOnBad, 0, 'a corrupt cycle never gets past verification');

      // a matching cycle: the commit goes through, also when the receiver dies at this point
      if (crashedOnBad > 0) {
        // arm the crash point again
        rx.child.kill('SIGTERM');
        await rx.exited;
        crashes = 0;
        rx = await spawnReceiver(dataDir, controlPort, dataPort, point);
        watch(rx);
      }
      const good = await connect('good');
      const c2 = await good.beginCycle({ cycleId: 'c2', disks });
      for (let off = 0; off < data.length; off += MiB) await c2.send(0, off, data.subarray(off, off + MiB));
      const img = await c2.commit({ sourceDigests: [{ disk: 0, tree: await treeOf(data) }] });
      assert.equal(crashes, 1, `the receiver was killed at ${point} during the good commit`);
      assert.deepEqual((await good.listImages()).map((i) => i.cycleId), ['c2']);
      // the source goes on with its next cycle
      const c3 = await good.beginCycle({ cycleId: 'c3', disks });
      await c3.send(0, 0, data.subarray(0, MiB));
      const img3 = await c3.commit({ sourceDigests: [{ disk: 0, tree: { ranges: [{ offset: 0, length: MiB }], root: (await treeOf(data.subarray(0, MiB))).root } }] });
      await good.close();
      rx.child.kill('SIGTERM');
      await rx.exited;

      const store = await openImageStore(join(dataDir, 'store'));
      try {
        assert.equal(sha256(await store.readImage('good', img.imageId, 0, 0, data.length)), sha256(data));
        assert.equal((await store.verify('good', img3.imageId)).ok, true);
        assert.deepEqual(await store.listImages('bad'), []);
        assert.deepEqual(await store.openCycles('bad'), [], 'the sender aborted the mismatching cycle');
        assert.deepEqual(await store.openCycles('good'), [], 'no cycle left open');
      } finally { await store.close(); }
    } finally { await rm(dir, { recursive: true, force: true }); }
  });
}
