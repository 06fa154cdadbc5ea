/**
 * `vmlift agent sync` against a `vmlift receiver serve` child, with both ports through fault proxies
 * (test/util/fault-proxy.ts, `--receiver PROXY --data-port PROXY`): the first TLS handshakes on both
 * ports are cut after the ClientHello, then the data connection is reset and dropped mid-cycle. The
 * cycle ends bit-identical, the bytes sent beyond a fault-free run within the link-fault bound
 * (docs/reliability.md, "Link faults").
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Receiver, runAgent, writeCodeFile, killChildren } from './harness.ts';
import { generateDisk, sha256File } from '../../scripts/lib/gen-disk.ts';
import { openImageStore, type ImageStore } from '../../src/store/index.ts';
import { FaultProxy } from '../util/fault-proxy.ts';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const WINDOW_MIB = 8;
/** Per fault: the window, TLS records and frame headers on it, a reconnect's handshakes and begin (as in test/transfer/link-faults.test.ts). */
const BOUND_PER_FAULT = WINDOW_MIB * MiB * 1.02 + 256 * 1024;

let dir: string;
let recv: Receiver;
let store: ImageStore;
let codeFile: string;
let ctl: FaultProxy;
let dat: FaultProxy;
let disk: string;
let diskSha: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmlift-agent-linkfaults-'));
  recv = await Receiver.start(join(dir, 'recv'));
  codeFile = await writeCodeFile(join(dir, 'code'), recv.code);
  store = await openImageStore(join(dir, 'recv', 'store'));
  ctl = await FaultProxy.start({ port: recv.controlPort });
  dat = await FaultProxy.start({ port: recv.dataPort });
  disk = join(dir, 'disk.img');
  await generateDisk({ path: disk, size: SIZE, seed: 23, dataFraction: 0.9 });
  diskSha = await sha256File(disk);
});

after(async () => {
  await ctl?.close();
  await dat?.close();
  await store?.close();
  await recv?.stop();
  await killChildren();
  await rm(dir, { recursive: true, force: true });
});

function agent(sourceId: string, onLine?: Parameters<typeof runAgent>[0]['onLine']) {
  return runAgent({
    devices: [disk], receiver: { address: ctl.address, fingerprint: recv.fingerprint } as Receiver, stateDir: join(dir, `state-${sourceId}`), codeFile, sourceId,
    extra: ['--data-port', String(dat.port), '--compression', '0', '--window-mib', String(WINDOW_MIB), '--checksum'],
    ...(onLine ? { onLine } : {}),
  });
}

async function exportSha(sourceId: string, imageId: string): Promise<string> {
  const out = join(dir, `${sourceId}.raw`);
  await store.export(sourceId, imageId, 0, 'raw', out);
  const sha = await sha256File(out);
  await rm(out, { force: true });
  return sha;
}

test('agent sync through proxies: handshakes cut, data reset and dropped mid-cycle; the image is bit-identical, re-sent bytes within the bound', async (t) => {
  const up = () => ctl.totals.up + dat.totals.up;
  const up0 = up();
  const base = await agent('lfa-base');
  assert.equal(base.exit, 0, base.stderr);
  const baseline = up() - up0;
  assert.equal(await exportSha('lfa-base', base.report!.imageId), diskSha);

  ctl.cutNext({ dir: 'up', after: 'tls-record' });
  dat.cutNext({ dir: 'up', after: 'tls-record' });
  const up1 = up();
  const d0 = dat.totals.up;
  const faults = [dat.reached('up', d0 + 10 * MiB).then(() => dat.reset()), dat.reached('up', d0 + 20 * MiB).then(() => dat.drop())];
  const t0 = Date.now();
  const r = await agent('lfa-faults');
  const ms = Date.now() - t0;
  assert.equal(r.exit, 0, r.stderr);
  assert.deepEqual(await Promise.all(faults), [1, 1], 'one data connection reset, one dropped, mid-cycle');
  assert.equal(ctl.armedCount + dat.armedCount, 0, 'both cut handshakes happened');
  assert.equal(await exportSha('lfa-faults', r.report!.imageId), diskSha, 'the export is the source');
  const over = up() - up1 - baseline;
  const bound = 2 * BOUND_PER_FAULT + 64 * 1024;
  t.diagnostic(`fault-free ${(baseline / MiB).toFixed(2)} MiB; with faults ${ms} ms, ${r.report!.attempts} attempt(s), re-sent ${(over / MiB).toFixed(2)} MiB (bound ${(bound / MiB).toFixed(2)} MiB, agent's own count ${(r.report!.resentBytes / MiB).toFixed(2)} MiB)`);
  assert.ok(over <= bound, `re-sent ${over} bytes, bound ${bound}`);
});
