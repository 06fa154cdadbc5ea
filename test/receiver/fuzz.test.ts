/**
 * The receiver fuzzer's short run (test/receiver/fuzz/fuzzer.ts; the long one is `npm run fuzz`):
 * 10,000 seeded inputs, 1,500 connections at once and the slow-drip clients against a real
 * `vmlift receiver serve`, while `vmlift agent sync` ships two cycles of another source. The run is
 * repeatable from its seed (VMLIFT_FUZZ_SEED overrides the fixed one). docs/reliability.md,
 * "Fuzzing the receiver".
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runFuzz } from './fuzz/fuzzer.ts';

const seed = Number(process.env.VMLIFT_FUZZ_SEED ?? 20261201);

test(`fuzzing the receiver (seed ${seed}): it never crashes, writes only in its data folder, stays under 512 MiB, answers with coded errors, and the other source's images are bit-identical`, async () => {
  const report = await runFuzz({ seed, inputs: 10_000, connections: 1500, dripMs: 1000, legitCycles: 2, rssBoundMiB: 512,
    log: (l) => process.stderr.write(`fuzz: ${l}\n`) });
  process.stderr.write(`fuzz report: ${JSON.stringify({ ...report, outcomes: undefined })}\n`);
  assert.deepEqual(report.findings, [], `seed ${seed}: repeat with VMLIFT_FUZZ_SEED=${seed}`);
  assert.ok(report.inputs >= 10_000, `${report.inputs} inputs`);
  assert.deepEqual(report.legit, { cycles: 2, identical: 2 });
  assert.ok(report.peakRssMiB <= 512, `peak RSS ${report.peakRssMiB} MiB`);
  assert.ok(report.floodAnswerMs !== null, 'a legitimate call answered while the connections were open');
  // the slow clients were cut off by the receiver's timeouts (handshake and HELLO 15 s, control headers 20 s checked every 5 s)
  for (const [what, secs] of Object.entries(report.slowloris)) assert.ok(secs < (what === 'control headers' ? 40 : 25), `${what}: ${secs} s`);
  const refused = Object.entries(report.outcomes).filter(([k]) => / refused [A-Z_]+$/.test(k)).reduce((n, [, v]) => n + v, 0);
  assert.ok(refused > 300, `data-port refusals with a code: ${refused}`);
});
