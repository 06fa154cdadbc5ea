// The short form of the kill -9 matrix (bench/chaos, `npm run chaos` for the full one): two seeded
// trials for each of the connector, the receiver and the agent, real processes, the lab vCenter and
// real TLS, each killed with SIGKILL at a point of a cycle, restarted and finished. Every committed
// image verifies and exports bit-identical to its source, nothing is left behind (no vmlift-
// snapshot, no temp file, no open cycle after a gc) and the bytes sent twice stay within the
// sender's window per kill. VMLIFT_CHAOS_SEED replays another seed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runMatrix, table, trialLine } from '../../bench/chaos/matrix.ts';

const seed = Number(process.env.VMLIFT_CHAOS_SEED ?? 20261201);

test(`kill -9 matrix, short form (seed ${seed}): no corrupt image, nothing left behind, re-sent bytes within the bound`, { timeout: 300_000 }, async (t) => {
  const lines: string[] = [];
  const { results, rows } = await runMatrix({
    // 8 MiB of change per cycle on 16 MiB disks: still two sender windows (4 MiB), quicker than the full matrix's 16 MiB
    seed, trials: 2, processes: ['connector', 'receiver', 'agent'], cliChecks: false, changeMib: 8, diskMib: 16, log: (l) => { lines.push(l); t.diagnostic(l); },
    pick: {
      connector: ['vc:snapshot-created', 'delay'],
      receiver: ['store:flush', 'store:commit-published'],
      agent: ['transfer:send', 'agent:after-commit'],
    },
  });
  t.diagnostic(`\n${table(rows)}`);
  assert.equal(results.length, 6);
  for (const r of results) {
    const line = trialLine(r);
    if (r.point.startsWith('delay')) assert.ok(r.kills <= 1, line);
    else assert.ok(r.hit, `the process was killed at its crash point: ${line}`);
    assert.ok(r.imagesChecked >= 1, line);
    assert.deepEqual(r.corrupt, [], line);
    assert.deepEqual(r.leftovers, [], line);
    assert.deepEqual(r.failures, [], line);
    assert.ok(r.resentBytes <= r.boundBytes, `re-sent within the bound: ${line}`);
    assert.ok(r.refWire >= 8 << 20, `the reference cycle's wire bytes were counted: ${line}`);
  }
});
