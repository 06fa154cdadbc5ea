/**
 * The receiver on a real full filesystem (a tmpfs of 96 MiB as its data folder), driven by agent
 * cycles over TLS: a cycle that runs out of space stops with NO_SPACE naming free and needed bytes,
 * the committed image stays intact (verify, SHA-256 of its export), and once space is freed the same
 * cycle resumes and completes bit-identical. A cycle whose estimate cannot fit is refused at begin.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, readFile, truncate } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Receiver, runAgent, vmlift, writeCodeFile, killChildren, type AgentRun } from '../agent/harness.ts';
import { canMount, smallFs, type SmallFs } from '../util/small-fs.ts';

const MiB = 1 << 20;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const skip = canMount() ? false : 'needs root to mount a tmpfs';

let dir: string;
let fs: SmallFs;
let recv: Receiver;
let codeFile: string;

before(async () => {
  if (skip) return;
  dir = await mkdtemp(join(tmpdir(), 'vmlift-diskfull-'));
  fs = smallFs(null, 96);
  recv = await Receiver.start(join(fs.dir, 'rx'));
  codeFile = await writeCodeFile(join(dir, 'code'), recv.code);
});

after(async () => {
  await recv?.stop();
  await killChildren();
  fs?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function errorOf(r: AgentRun): { code: string; message: string; fix?: string } {
  const line = r.lines.find((l) => 'error' in l) as { error: { code: string; message: string; fix?: string } } | undefined;
  assert.ok(line, `an error line on stdout: ${r.stderr}`);
  return line.error;
}

/** Verify the image and export its disk 0: the SHA-256 of the export. */
async function exported(source: string, image: string): Promise<string> {
  const D = ['--data-dir', recv.dataDir];
  const v = await vmlift(['image', 'verify', ...D, '--source', source, '--image', image, '--json']);
  assert.equal(v.code, 0, v.stdout.slice(0, 3000) + v.stderr);
  assert.equal((JSON.parse(v.stdout) as { ok: boolean }).ok, true);
  const out = join(dir, `${source}-${image}.raw`);
  const x = await vmlift(['image', 'export', ...D, '--source', source, '--image', image, '--disk', '0', '--format', 'raw', '--output', out]);
  assert.equal(x.code, 0, x.stderr);
  const h = sha(await readFile(out));
  await rm(out);
  return h;
}

/** Free bytes left before cycle 2 (24 MiB of new chunks): it runs out early, midway and near its end; `restart`: the receiver restarts before the resume. */
const FILL_POINTS = [
  { leave: 2 * MiB, restart: false },
  { leave: 10 * MiB, restart: true },
  { leave: 21 * MiB, restart: false },
];

test('a cycle that fills the data folder stops with NO_SPACE; the committed image stays intact; freed space lets the same cycle finish', { skip, timeout: 400_000 }, async () => {
  const disk = join(dir, 'disk.img');
  let prev = randomBytes(24 * MiB);
  await writeFile(disk, prev);
  const args = { devices: [disk], receiver: recv, stateDir: join(dir, 'state'), codeFile, sourceId: 'full', extra: ['--max-images', '2'] };
  const r1 = await runAgent(args);
  assert.equal(r1.exit, 0, r1.stderr);
  let prevImage = r1.report!.imageId;

  for (const { leave, restart } of FILL_POINTS) {
    // every byte changes: the cycle sends 24 MiB of new chunks
    const next = randomBytes(24 * MiB);
    await writeFile(disk, next);
    fs.fill(leave);
    const freeBefore = fs.freeBytes();
    const t0 = performance.now();
    const r2 = await runAgent(args);
    const stopMs = performance.now() - t0;
    assert.notEqual(r2.exit, 0, `the cycle stops (${freeBefore} bytes free)`);
    const e = errorOf(r2);
    assert.equal(e.code, 'NO_SPACE', JSON.stringify(e));
    const m = /has (\d+) bytes .* free, needs (?:at least )?(\d+) bytes/.exec(e.message);
    assert.ok(m, `free and needed bytes named: ${e.message}`);
    assert.ok(Number(m[1]) <= freeBefore, 'the free figure is what the filesystem had left');
    assert.ok(Number(m[2]) > 0);
    assert.match(e.fix ?? '', /free space in .*rx.*--max-images/);
    assert.doesNotMatch(r2.stderr, /unexpected error/);

    // the committed image is untouched, and nothing was published
    assert.equal(await exported('full', prevImage), sha(prev));
    const ls = await vmlift(['image', 'ls', '--data-dir', recv.dataDir, '--source', 'full', '--json']);
    assert.equal(ls.code, 0, ls.stderr);
    assert.doesNotMatch(ls.stdout, new RegExp(`"imageId":"${Number(prevImage) + 1}"`));

    fs.unfill();
    if (restart) { await recv.stop(); await recv.spawn(); }
    const r3 = await runAgent(args);
    assert.equal(r3.exit, 0, r3.stderr);
    assert.equal(r3.report!.imageId, String(Number(prevImage) + 1));
    assert.equal(r3.report!.resumedFromState, true, 'the same cycle resumed');
    assert.equal(await exported('full', r3.report!.imageId), sha(next));
    assert.equal(await exported('full', prevImage), sha(prev));
    console.log(`figures: ${freeBefore} bytes free: NO_SPACE after ${Math.round(stopMs)} ms (${e.message.replace(/^.*?: the receiver/, 'the receiver')}); `
      + `${restart ? 'receiver restarted, ' : ''}resume sent ${r3.report!.payloadBytes} of ${next.length} bytes`);
    prev = next;
    prevImage = r3.report!.imageId;
  }
});

test('a cycle whose estimate cannot fit is refused at begin, before anything is read', { skip, timeout: 120_000 }, async () => {
  // 20 MiB of data and a 12 MiB hole: the agent's estimate is the allocated 20 MiB
  const disk = join(dir, 'big.img');
  await writeFile(disk, randomBytes(20 * MiB));
  await truncate(disk, 32 * MiB);
  fs.fill(24 * MiB);
  try {
    const r = await runAgent({ devices: [disk], receiver: recv, stateDir: join(dir, 'state-big'), codeFile, sourceId: 'big' });
    assert.notEqual(r.exit, 0);
    const e = errorOf(r);
    assert.equal(e.code, 'NO_SPACE', JSON.stringify(e));
    assert.match(e.message, /refused before it began \(estimate 20971520 bytes plus a reserve of 16777216\)/);
    assert.match(e.message, /has \d+ bytes .* free, needs \d+ bytes/);
    assert.match(e.fix ?? '', /free space in .*--max-images.*bigger data folder/);
    // nothing read: no progress of any disk was reported, no cycle left open
    assert.ok(!r.lines.some((l) => l.type === 'progress' && Number((l as { done?: number }).done ?? 0) > 0), JSON.stringify(r.lines.slice(0, 5)));
    assert.match(recv.stderr, /cycle refused: no space for its estimate/);
  } finally {
    fs.unfill();
  }
  const ok = await runAgent({ devices: [disk], receiver: recv, stateDir: join(dir, 'state-big'), codeFile, sourceId: 'big' });
  assert.equal(ok.exit, 0, ok.stderr);
  assert.equal(await exported('big', ok.report!.imageId), sha(await readFile(disk)));
});
