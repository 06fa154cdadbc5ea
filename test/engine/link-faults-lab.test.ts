/**
 * Link faults on the connector's two links, through fault proxies (test/util/fault-proxy.ts):
 * connector ↔ lab (the vCenter SOAP session and the HTTP datastore reads share the lab's https port)
 * and connector ↔ receiver (control and data ports). Each case runs a full cycle of a new job over
 * the same VM, breaks a link mid-cycle, and checks that the cycle finishes with the snapshot's
 * SHA-256 and leaves no snapshot on the VM. Figures: docs/reliability.md, "Link faults".
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startRig, settings, liveSha, imageSha, guestWrites, MiB, type EngineRig } from './harness.ts';
import { FaultProxy } from '../util/fault-proxy.ts';
import { HttpDatastoreSource } from '../../src/source/http-datastore/index.ts';
import { silentLogger } from '../../src/util/log.ts';

/** Short silence limits, so that stalls are found in seconds (production: 60 s SOAP, 60 s disk reads, link-timeouts.ts). */
const VC_TIMEOUT_MS = 2000;
const READ_TIMEOUT_MS = 2000;
const TIMEOUTS = { connectMs: 2500, ackMs: 3000, requestMs: 3000, commitMs: 5000 };

let rig: EngineRig;
let labProxy: FaultProxy;
let rxCtl: FaultProxy;
let rxDat: FaultProxy;
const figures: string[] = [];
const VM = 'vm-0001';

before(async () => {
  rig = await startRig({
    vms: 1, diskMb: 32, vcTimeoutMs: VC_TIMEOUT_MS,
    retry: { attempts: 6, baseDelayMs: 50, maxDelayMs: 400 },
    labUrl: async (url) => {
      const u = new URL(url);
      labProxy = await FaultProxy.start({ host: u.hostname, port: Number(u.port) });
      u.port = String(labProxy.port);
      return u.toString();
    },
    sender: async (rx) => {
      rxCtl = await FaultProxy.start({ port: rx.rx.controlPort });
      rxDat = await FaultProxy.start({ port: rx.rx.dataPort });
      return { receiver: rxCtl.address, dataPort: rxDat.port, timeouts: TIMEOUTS, resumeTimeoutMs: 60_000 };
    },
    // the HTTP datastore reads, as the connector wires them, with a short read timeout
    opener: ({ vc, port, lab }) => ({
      async open(vmRef, s, disk) {
        const { url } = vc.diskUrl({ file: disk.file! }, await port.datacenterOf(vmRef));
        return HttpDatastoreSource.open({ url, cookie: () => vc.session.cookie, trust: { thumbprint: lab.thumbprint }, maxReadSize: 2 * MiB, timeoutMs: READ_TIMEOUT_MS, logger: silentLogger });
      },
    }),
  });
  const vm = rig.lab.vm(VM);
  await guestWrites(rig.lab, VM, vm.disks[0]!.key, vm.disks[0]!.capacity, 120, 128 * 1024);
});
after(async () => {
  if (figures.length) console.log(`connector link-fault figures:\n${figures.join('\n')}`);
  await rig?.close();
  for (const p of [labProxy, rxCtl, rxDat]) await p?.close();
});

/**
 * A full cycle of job `id` with `fault` applied after the snapshot (and `during`, once the lab link
 * carried `atDown` more bytes down); the image must be the disk at the snapshot, no snapshot left.
 */
async function cycle(id: string, o: { afterSnapshot?: () => void; during?: { proxy: () => FaultProxy; dir: 'up' | 'down'; bytes: number; fault: () => void } } = {}): Promise<number> {
  const vm = rig.lab.vm(VM);
  const d = vm.disks[0]!;
  const expected = await liveSha(rig.lab, VM, d.key, d.capacity);
  rig.engine.createJob({ id, vmRef: vm.moref, settings: settings() });
  rig.engine.start(id);
  let during: Promise<void> = Promise.resolve();
  let fired = false;
  let snapshots = 0;
  rig.hooks.afterSnapshot = async () => {
    if (snapshots++) return; // a retried attempt takes a new snapshot: the fault is applied once
    o.afterSnapshot?.();
    if (o.during) {
      const p = o.during.proxy();
      const f = o.during.fault;
      during = p.reached(o.during.dir, p.totals[o.during.dir] + o.during.bytes).then(() => { fired = true; f(); });
    }
  };
  const t0 = Date.now();
  try { await rig.engine.runNow(id); } finally { rig.hooks.afterSnapshot = undefined; }
  const ms = Date.now() - t0;
  figures.push(`    (${id}: ${snapshots} snapshot(s) taken, i.e. ${snapshots} attempt(s) of the cycle)`);
  if (o.during) {
    await Promise.race([during, new Promise((r) => setTimeout(r, 10))]);
    assert.ok(fired, 'the fault came while the cycle ran');
  }
  const job = rig.engine.getJob(id);
  assert.equal(job.state, 'waiting', `${JSON.stringify(job.error)}; lab connections: ${JSON.stringify(labProxy.connections.slice(-12))}`);
  const [c] = rig.state.listCycles(id);
  assert.equal(c!.state, 'committed');
  assert.equal(await imageSha(rig.rx, job.sourceId, c!.imageId!, 0, d.capacity), expected, 'the image is the disk at the snapshot');
  const left = (await rig.lab.snapshots(VM)).filter((s) => s.name.startsWith('vmlift-'));
  assert.deepEqual(left.map((s) => s.name), [], 'no vmlift- snapshot left on the VM');
  return ms;
}

test('fault-free job through the proxies', async () => {
  const ms = await cycle('lf-base');
  figures.push(`  fault-free: ${ms} ms, lab link ${(labProxy.totals.down / MiB).toFixed(1)} MiB down`);
});

test('SOAP or disk-read request reset mid-call (RST after the request began): the cycle retries and finishes', async () => {
  const ms = await cycle('lf-lab-reset', { afterSnapshot: () => { labProxy.drop(); labProxy.faultNext({ fault: 'reset', dir: 'up', after: 'tls-record', plus: 300 }); } });
  assert.equal(labProxy.armedCount, 0, 'the armed connection was used');
  figures.push(`  lab: request reset mid-call: ${ms} ms`);
});

test('lab connection dropped mid-call (FIN after the request began)', async () => {
  const ms = await cycle('lf-lab-drop', { afterSnapshot: () => { labProxy.drop(); labProxy.faultNext({ fault: 'cut', dir: 'up', after: 'tls-record', plus: 300 }); } });
  assert.equal(labProxy.armedCount, 0);
  figures.push(`  lab: connection dropped mid-call: ${ms} ms`);
});

test('lab request stalled mid-call: the SOAP or read timeout ends it, the cycle retries and finishes', async () => {
  const ms = await cycle('lf-lab-stall', { afterSnapshot: () => { labProxy.drop(); labProxy.faultNext({ fault: 'stall', dir: 'up', after: 'tls-record', plus: 300 }); } });
  assert.equal(labProxy.armedCount, 0);
  assert.ok(ms >= VC_TIMEOUT_MS, `the stalled call waited for its ${VC_TIMEOUT_MS} ms timeout (cycle ${ms} ms)`);
  figures.push(`  lab: request stalled mid-call: ${ms} ms (timeouts ${VC_TIMEOUT_MS} ms)`);
});

test('TLS handshakes to the lab cut after the ClientHello', async () => {
  const ms = await cycle('lf-lab-hs', { afterSnapshot: () => { labProxy.drop(); labProxy.cutNext({ dir: 'up', after: 'tls-record', count: 3 }); } });
  assert.equal(labProxy.armedCount, 0);
  figures.push(`  lab: 3 handshakes cut after the ClientHello: ${ms} ms`);
});

test('the snapshot removal stalled mid-call: retried after the SOAP timeout, no snapshot left (before: left for the next cycle)', async () => {
  let removals = 0;
  rig.hooks.beforeRemoveSnapshot = async () => {
    if (removals++) return;
    labProxy.drop();
    labProxy.faultNext({ fault: 'stall', dir: 'up', after: 'tls-record', plus: 300 });
  };
  try {
    const ms = await cycle('lf-lab-remove');
    assert.equal(labProxy.armedCount, 0);
    assert.ok(removals >= 1);
    figures.push(`  lab: snapshot removal stalled: ${ms} ms`);
  } finally { rig.hooks.beforeRemoveSnapshot = undefined; }
});

test('disk reads stalled and reset in the middle of the disk', async () => {
  const stall = await cycle('lf-read-stall', { during: { proxy: () => labProxy, dir: 'down', bytes: 6 * MiB, fault: () => { labProxy.stall(); } } });
  const reset = await cycle('lf-read-reset', { during: { proxy: () => labProxy, dir: 'down', bytes: 6 * MiB, fault: () => { labProxy.reset(); } } });
  figures.push(`  lab: every connection stalled 6 MiB into the reads: ${stall} ms; reset there: ${reset} ms`);
});

test('connector to receiver: data connection reset and half-open mid-cycle, control begin reset', async () => {
  const reset = await cycle('lf-rx-reset', { during: { proxy: () => rxDat, dir: 'up', bytes: 5 * MiB, fault: () => { rxDat.reset(); rxCtl.faultNext({ fault: 'reset', dir: 'up', after: 'tls-record', plus: 100 }); } } });
  const half = await cycle('lf-rx-half', { during: { proxy: () => rxDat, dir: 'up', bytes: 5 * MiB, fault: () => { rxDat.halfOpen(); } } });
  figures.push(`  receiver: data reset + begin reset: ${reset} ms; data half-open: ${half} ms (ackMs ${TIMEOUTS.ackMs})`);
});

test('both links throttled (lab 12 MB/s, receiver 12 MB/s each way): one attempt, no retry', async () => {
  labProxy.throttle(12e6);
  rxDat.throttle(12e6);
  try {
    const reconnectsBefore = rxDat.connections.length;
    const ms = await cycle('lf-throttle');
    assert.ok(ms >= 1000 * (8 * MiB) / 12e6, `${ms} ms: the reads were held to the rate`);
    assert.equal(rxDat.connections.length - reconnectsBefore, 1, 'one data connection: nothing timed out');
    figures.push(`  both links throttled to 12 MB/s: ${ms} ms`);
  } finally { labProxy.throttle(null); rxDat.throttle(null); }
});
