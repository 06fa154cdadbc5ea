/**
 * Crash of either side in the middle of a cycle: the cycle resumes, the result is bit-identical,
 * and the bytes sent twice stay within the sender's resend window.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateDisk, sha256File } from '../../scripts/lib/gen-disk.ts';
import { openImageStore } from '../../src/store/index.ts';
import { Receiver, runAgent, startAgent, killWait, writeCodeFile, type CycleLine, killChildren } from './harness.ts';

const MiB = 1024 * 1024;
/** The agents here keep at most this much unacknowledged data for resend (hidden --window-mib). */
const WINDOW_MIB = 8;
/**
 * Bound on bytes sent twice per interruption: the resend window, plus what the receiver had not
 * flushed yet is inside it too; 2 MiB of slack covers frame headers and the progress line lag.
 */
const RESEND_BOUND = (WINDOW_MIB + 2) * MiB;
/** Slow enough to interrupt mid-cycle on any machine, fast enough for the time budget. */
const AGENT_FLAGS = ['--compression', '0', '--window-mib', String(WINDOW_MIB), '--bandwidth', '160'];

let dir: string;
let recv: Receiver;
let codeFile: string;
let disk: string;
let sha: string;
let reference: CycleLine;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmlift-agent-resume-'));
  recv = await Receiver.start(join(dir, 'recv'));
  codeFile = await writeCodeFile(join(dir, 'code'), recv.code);
  disk = join(dir, 'disk.img');
  await generateDisk({ path: disk, size: 256 * MiB, seed: 31, dataFraction: 0.5 });
  sha = await sha256File(disk);
  // An uninterrupted cycle of the same data: what a clean run puts on the wire.
  const ref = await runAgent({ devices: [disk], receiver: recv, stateDir: join(dir, 'state-ref'), codeFile, sourceId: 'ref', extra: ['--compression', '0'] });
  assert.equal(ref.exit, 0, ref.stderr);
  reference = ref.report!;
});

after(async () => {
  await recv?.stop();
  await killChildren();
  await rm(dir, { recursive: true, force: true });
});

async function exportSha(sourceId: string, imageId: string): Promise<string> {
  const store = await openImageStore(join(dir, 'recv', 'store'));
  try {
    const out = join(dir, `${sourceId}-${imageId}.raw`);
    await store.export(sourceId, imageId, 0, 'raw', out);
    const s = await sha256File(out);
    await rm(out);
    return s;
  } finally {
    await store.close();
  }
}

function progressFraction(l: Record<string, unknown>): number {
  return l.type === 'progress' ? Number(l.done) / Number(l.total) : 0;
}

test('kill -9 of the receiver mid-cycle: the agent resumes, the image is bit-identical, re-sent bytes bounded', async () => {
  let killed = false;
  let restarted: Promise<void> | undefined;
  const run = startAgent({
    devices: [disk], receiver: recv, stateDir: join(dir, 'state-rk'), codeFile, sourceId: 'rk', extra: AGENT_FLAGS,
    onLine: (l) => {
      if (!killed && progressFraction(l) >= 0.4) {
        killed = true;
        restarted = recv.kill9().then(() => new Promise((r) => setTimeout(r, 1500))).then(() => recv.spawn());
      }
    },
  });
  const exit = await run.done;
  await restarted;
  assert.ok(killed, 'the receiver was killed mid-cycle');
  assert.equal(exit, 0, run.stderr);
  const report = run.lines.find((l) => l.type === 'cycle') as unknown as CycleLine;
  assert.equal(report.imageId, '1');
  assert.equal(await exportSha('rk', '1'), sha, 'bit-identical to the source');
  const twice = report.wireBytes - reference.wireBytes;
  process.stderr.write(`# receiver kill: wire ${report.wireBytes} vs clean ${reference.wireBytes}: ${twice} bytes sent twice (sender counted ${report.resentBytes})\n`);
  assert.ok(twice <= RESEND_BOUND, `${twice} bytes sent twice > bound ${RESEND_BOUND}`);
  assert.ok(report.resentBytes <= RESEND_BOUND);
});

test('kill -9 of the agent mid-cycle: the next run resumes the same cycle, skips what the receiver holds', async () => {
  const stateDir = join(dir, 'state-ak');
  let wireAtKill = 0;
  let killedAt = 0;
  const first = startAgent({
    devices: [disk], receiver: recv, stateDir, codeFile, sourceId: 'ak', extra: AGENT_FLAGS,
    env: { VMLIFT_PROGRESS_INTERVAL_MS: '50' },
    onLine: (l, r) => {
      if (!killedAt && progressFraction(l) >= 0.5) {
        killedAt = progressFraction(l);
        wireAtKill = Number(l.wire);
        r.proc.kill('SIGKILL');
      }
    },
  });
  const exit1 = await first.done;
  assert.equal(exit1, 'SIGKILL', first.stderr);
  await killWait(first.proc, 'SIGKILL');
  const open = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as { openCycle: { cycleId: string } | null };
  assert.ok(open.openCycle, 'the killed agent left its open cycle id behind');

  const second = await runAgent({ devices: [disk], receiver: recv, stateDir, codeFile, sourceId: 'ak', extra: AGENT_FLAGS });
  assert.equal(second.exit, 0, second.stderr);
  const report = second.report!;
  assert.equal(report.cycleId, open.openCycle.cycleId, 'same cycle resumed');
  assert.equal(report.resumedFromState, true);
  assert.equal(report.imageId, '1');
  assert.equal(await exportSha('ak', '1'), sha, 'bit-identical to the source');
  const twice = wireAtKill + report.wireBytes - reference.wireBytes;
  process.stderr.write(`# agent kill at ${(killedAt * 100).toFixed(0)}%: ${wireAtKill} + ${report.wireBytes} vs clean ${reference.wireBytes}: ${twice} bytes sent twice\n`);
  assert.ok(twice <= RESEND_BOUND, `${twice} bytes sent twice > bound ${RESEND_BOUND}`);
  assert.ok(report.wireBytes < reference.wireBytes * 0.75, 'the resumed run skipped what the receiver already held');
  const state = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as { openCycle: unknown };
  assert.equal(state.openCycle, null, 'the open cycle is cleared after commit');
});
