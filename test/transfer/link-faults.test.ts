/**
 * Link faults between a Sender and a real receiver over TLS: every control and data connection goes
 * through a fault proxy (test/util/fault-proxy.ts). Each case sends the same 28 MiB disk as a fresh
 * source, breaks the link mid-cycle, and checks that the cycle finishes with the source's SHA-256 and
 * that the bytes the sender put on the wire beyond a fault-free run stay within the link-fault bound
 * (docs/reliability.md, "Link faults": the send window per fault, plus framing).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { startTestReceiver, captureLogger, readDisk, sha256, type TestRx } from './helpers.ts';
import { Sender } from '../../src/transfer/sender.ts';
import { FaultProxy } from '../util/fault-proxy.ts';

const MiB = 1 << 20;
const SIZE = 28 * MiB;
const WINDOW = 8 * MiB;
/** Short silence limits so that a stall is detected in seconds (production: link-timeouts.ts). */
/** Above what a loaded CI machine takes for a handshake, a flush or a begin, so that only the faults trip them. */
const TIMEOUTS = { connectMs: 2500, ackMs: 3000, requestMs: 3000, commitMs: 4000 };
/** Per fault: the window, TLS records and frame headers on it (< 1 %), a reconnect's handshakes and begin. */
const BOUND_PER_FAULT = WINDOW * 1.02 + 256 * 1024;
/** Control requests differ a little in size between runs (ids, numbers in JSON). */
const SLACK = 64 * 1024;
/** The fault comes once this much went up the data port in the cycle. */
const FAULT_AT = 10 * MiB;

/** Deterministic, incompressible-ish content (compression is off anyway: wire bytes = payload bytes). */
function content(size: number): Buffer {
  const b = Buffer.alloc(size);
  for (let off = 0, i = 0; off < size; off += 32, i++) createHash('sha256').update(`link-faults ${i}`).digest().copy(b, off);
  return b;
}
const data = content(SIZE);
const dataSha = sha256(data);

let t: TestRx;
let ctl: FaultProxy;
let dat: FaultProxy;
let baseline = 0;
const figures: string[] = [];

before(async () => {
  t = await startTestReceiver();
  ctl = await FaultProxy.start({ port: t.rx.controlPort });
  dat = await FaultProxy.start({ port: t.rx.dataPort });
});
after(async () => {
  if (figures.length) console.log(`link-fault figures (window ${WINDOW / MiB} MiB, ${SIZE / MiB} MiB cycle):\n${figures.join('\n')}`);
  await ctl?.close();
  await dat?.close();
  await t?.close();
});

interface Run {
  ms: number;
  upBytes: number;
  reconnects: number;
  log: ReturnType<typeof captureLogger>;
  /** When the fault was applied (ms since the epoch). */
  faultAt: number | null;
}

/** One cycle of a fresh source through both proxies; `fault` runs once FAULT_AT bytes went up the data port. */
async function run(sourceId: string, fault?: () => void | Promise<void>, commitFault?: () => void): Promise<Run> {
  const log = captureLogger();
  const sender = await Sender.connect(t.senderOpts(sourceId, {
    receiver: ctl.address, dataPort: dat.port, windowBytes: WINDOW, compression: 0, timeouts: TIMEOUTS, logger: log.logger, resumeTimeoutMs: 60_000,
  }));
  const up0 = ctl.totals.up + dat.totals.up;
  const t0 = Date.now();
  const c = await sender.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: SIZE }] });
  let faultAt: number | null = null;
  const faulted = fault ? dat.reached('up', dat.totals.up + FAULT_AT).then(async () => { faultAt = Date.now(); await fault(); }) : Promise.resolve();
  for (let off = 0; off < SIZE; off += MiB) await c.send(0, off, data.subarray(off, off + MiB));
  await faulted;
  await c.flush();
  commitFault?.();
  const img = await c.commit({ sourceDigests: [{ disk: 0, sha256: dataSha }] });
  const ms = Date.now() - t0;
  await sender.close();
  assert.equal(sha256(await readDisk(t.rx, sourceId, img.imageId, 0, SIZE)), dataSha, 'the image is bit-identical to the source');
  return { ms, upBytes: ctl.totals.up + dat.totals.up - up0, reconnects: c.stats().reconnects, log, faultAt };
}

/** Bytes sent beyond the fault-free run, checked against the bound for `faults` faults. */
function resent(name: string, r: Run, faults: number, extra = ''): number {
  const over = r.upBytes - baseline;
  const bound = faults * BOUND_PER_FAULT + SLACK;
  figures.push(`  ${name}: ${r.ms} ms, ${r.reconnects} reconnect attempts, re-sent ${(over / MiB).toFixed(2)} MiB (bound ${(bound / MiB).toFixed(2)} MiB)${extra}`);
  assert.ok(over <= bound, `${name}: re-sent ${over} bytes, bound ${bound}`);
  return over;
}

/** ms from the fault to the first log line with `msg`, which must name the timeout. */
function detected(r: Run, msg: string, timeout: string): number {
  const line = r.log.lines.find((l) => String(l.msg).includes(msg) || String(l.err ?? '').includes(msg));
  assert.ok(line, `a log line "${msg}"; got ${r.log.lines.map((l) => `${l.msg} ${l.err ?? ''}`).join(' | ')}`);
  assert.ok(JSON.stringify(line).includes(timeout), `the line names the timeout ${timeout}: ${JSON.stringify(line)}`);
  return Number(line.time) - r.faultAt!;
}

test('fault-free run through the proxies (the baseline for re-sent bytes)', async () => {
  const r = await run('lf-base');
  baseline = r.upBytes;
  assert.equal(r.reconnects, 0);
  figures.push(`  fault-free: ${r.ms} ms, ${(baseline / MiB).toFixed(2)} MiB up both ports`);
  assert.ok(baseline >= SIZE && baseline < SIZE * 1.02, `wire bytes ${baseline} for ${SIZE} of payload`);
});

test('data connection dropped (FIN) mid-cycle: reconnects, resends at most the window', async () => {
  const r = await run('lf-drop', () => { assert.equal(dat.drop(), 1); });
  assert.ok(r.reconnects >= 1);
  resent('drop', r, 1);
});

test('data connection reset (RST) mid-cycle: reconnects, resends at most the window', async () => {
  const r = await run('lf-reset', () => { assert.equal(dat.reset(), 1); });
  assert.ok(r.reconnects >= 1);
  resent('reset', r, 1);
});

test('data connection stalled mid-cycle: the ack timeout detects it and the cycle resumes', async () => {
  const r = await run('lf-stall', () => { assert.equal(dat.stall(), 1); });
  const ms = detected(r, 'receiver stopped acknowledging', 'ackMs');
  // the silence counts from the last ACK (every ~300 ms while data flows), so it can end a little before ackMs after the fault
  assert.ok(ms > 0 && ms <= TIMEOUTS.ackMs + 3000, `stall detected after ${ms} ms (ackMs ${TIMEOUTS.ackMs})`);
  resent('stall', r, 1, `, detected after ${ms} ms`);
});

test('half-open data connection (receiver side gone, sender side silent): detected by the ack timeout', async () => {
  const r = await run('lf-half', () => { assert.equal(dat.halfOpen(), 1); });
  const ms = detected(r, 'receiver stopped acknowledging', 'ackMs');
  // the silence counts from the last ACK (every ~300 ms while data flows), so it can end a little before ackMs after the fault
  assert.ok(ms > 0 && ms <= TIMEOUTS.ackMs + 3000, `half-open detected after ${ms} ms (ackMs ${TIMEOUTS.ackMs})`);
  resent('half-open', r, 1, `, detected after ${ms} ms`);
});

test('throttled link (16 MB/s each way): no reconnect, nothing re-sent', async () => {
  dat.throttle(16e6);
  try {
    const r = await run('lf-throttle');
    assert.equal(r.reconnects, 0);
    assert.ok(r.ms >= (SIZE / 16e6) * 1000 * 0.9, `${r.ms} ms for ${SIZE} bytes at 16 MB/s`);
    resent('throttle 16 MB/s', r, 0);
  } finally { dat.throttle(null); }
});

test('TLS handshakes cut after the ClientHello on reconnect: retried until one completes', async () => {
  const r = await run('lf-hscut', () => { dat.cutNext({ dir: 'up', after: 'tls-record', count: 2 }); dat.drop(); });
  assert.equal(dat.armedCount, 0, 'both armed handshakes were tried');
  assert.ok(r.reconnects >= 3, `${r.reconnects} attempts: two cut handshakes, then one through`);
  resent('handshake cut x2', r, 1);
});

test('TLS handshake stalled after the ClientHello on reconnect: the connect timeout detects it', async () => {
  const r = await run('lf-hsstall', () => { dat.faultNext({ fault: 'stall', dir: 'up', after: 'tls-record' }); dat.reset(); });
  const ms = detected(r, 'did not complete TLS within', 'connectMs') ;
  assert.ok(r.reconnects >= 2);
  resent('handshake stall', r, 1, `, reconnect failed after ${ms} ms from the reset`);
});

test('data connection gone half-open after TLS, before READY: the HELLO wait times out (before: hung for ever)', async () => {
  // the handshake completes (the client's Finished is well within 100 bytes after the ClientHello), then the
  // receiver's side goes and the sender's stays open and silent while it waits for READY
  const r = await run('lf-ready', () => { dat.faultNext({ fault: 'half-open', dir: 'up', after: 'tls-record', plus: 100 }); dat.drop(); });
  const ms = detected(r, 'did not answer HELLO within', 'ackMs');
  assert.ok(r.reconnects >= 2);
  resent('half-open before READY', r, 1, `, reconnect failed after ${ms} ms from the drop`);
});

test('control requests reset and stalled while the cycle is begun again: retried, detected by the request timeout', async () => {
  const r = await run('lf-ctl', () => {
    ctl.faultNext({ fault: 'reset', dir: 'up', after: 'tls-record', plus: 100 });
    ctl.faultNext({ fault: 'stall', dir: 'up', after: 'tls-record', plus: 100 });
    dat.drop();
  });
  assert.equal(ctl.armedCount, 0);
  const ms = detected(r, 'sent nothing for', 'requestMs');
  assert.ok(r.reconnects >= 3, `${r.reconnects} attempts`);
  resent('control reset + stall at begin', r, 1, `, request stall failed after ${ms} ms from the drop`);
});

test('commit request stalled: the commit timeout detects it, the retried commit makes one image', async () => {
  const r = await run('lf-commit', undefined, () => { ctl.faultNext({ fault: 'stall', dir: 'up', after: 'tls-record', plus: 100 }); });
  const line = r.log.lines.find((l) => l.msg === 'cycle committed');
  assert.ok(line);
  const images = (await (await t.sender('lf-commit')).listImages());
  assert.equal(images.length, 1, 'one image for the cycle');
  assert.ok(r.ms >= TIMEOUTS.commitMs, `the commit waited for its ${TIMEOUTS.commitMs} ms timeout (cycle ${r.ms} ms)`);
  resent('commit stall', r, 0, ' (no data re-sent; the commit and its retry)');
});

test('half-open the other way (sender side gone, receiver side silent): the sender reconnects and commits', async () => {
  const r = await run('lf-half-rx', () => { assert.equal(dat.halfOpen('server'), 1); });
  assert.ok(r.reconnects >= 1);
  resent('half-open, receiver side kept', r, 1);
  // the reconnection takes the cycle over on the receiver, which closes the connection that fed it before
  assert.equal(dat.keptServers, 0, 'the receiver closed the silent connection');
});
