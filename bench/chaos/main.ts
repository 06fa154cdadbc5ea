/**
 * `npm run chaos -- [--seed N] [--trials K] [--process connector|receiver|agent[,...]] [--only I,J] [--points NAME,...|delay] [--api-checks]`:
 * the kill -9 matrix (bench/chaos/matrix.ts). Prints every trial (seed and point, to replay it) and
 * the table; exits 1 when any image is corrupt, anything is left behind or a re-send passes its bound.
 */
import { parseArgs } from 'node:util';
import { runMatrix, table, PROCESSES, type ChaosProcess } from './matrix.ts';

const { values } = parseArgs({ options: {
  seed: { type: 'string' }, trials: { type: 'string', default: '10' }, process: { type: 'string' }, only: { type: 'string' },
  points: { type: 'string' }, 'api-checks': { type: 'boolean', default: false }, 'change-mib': { type: 'string' }, 'window-mib': { type: 'string' },
} });
const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
const processes = (values.process ? values.process.split(',') : PROCESSES) as ChaosProcess[];
for (const p of processes) if (!PROCESSES.includes(p)) { process.stderr.write(`unknown process ${p}: use ${PROCESSES.join(', ')}\n`); process.exit(2); }
const t0 = Date.now();
const { rows } = await runMatrix({
  seed, trials: Number(values.trials), processes, pick: Object.fromEntries(processes.map((p) => [p, values.points?.split(',') ?? []])), only: values.only?.split(',').map(Number), cliChecks: !values['api-checks'],
  ...(values['change-mib'] ? { changeMib: Number(values['change-mib']) } : {}), ...(values['window-mib'] ? { windowMib: Number(values['window-mib']) } : {}),
});
process.stdout.write(`\n${table(rows)}\n\nseed ${seed}, ${((Date.now() - t0) / 1000).toFixed(0)} s; replay: npm run chaos -- --seed ${seed} --trials ${values.trials}${values.process ? ` --process ${values.process}` : ''}\n`);
const failures = rows.reduce((n, r) => n + r.failures, 0);
if (failures) process.stdout.write(`${failures} other failures (see the FAIL lines above)\n`);
process.exit(rows.some((r) => r.corrupt || r.leftovers || r.overBound || r.failures) ? 1 : 0);
