/**
 * `npm run fuzz -- [--seed N] [--inputs N] [--connections N] [--json]`: fuzz a real receiver
 * (test/receiver/fuzz/fuzzer.ts). Exits 1 on any finding; the seed repeats a run.
 */
import { parseArgs } from 'node:util';
import { runFuzz } from './fuzzer.ts';

const { values } = parseArgs({ options: {
  seed: { type: 'string' }, inputs: { type: 'string', default: '100000' }, connections: { type: 'string', default: '3000' },
  'legit-cycles': { type: 'string', default: '3' }, 'drip-ms': { type: 'string', default: '1000' }, 'rss-bound-mib': { type: 'string', default: '512' }, json: { type: 'boolean' },
} });
const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
process.stderr.write(`fuzz seed ${seed} (repeat with --seed ${seed})\n`);
const report = await runFuzz({
  seed, inputs: Number(values.inputs), connections: Number(values.connections), legitCycles: Number(values['legit-cycles']),
  dripMs: Number(values['drip-ms']), rssBoundMiB: Number(values['rss-bound-mib']), log: (l) => process.stderr.write(`${l}\n`),
});
process.stdout.write(values.json ? `${JSON.stringify(report)}\n` : `${JSON.stringify(report, null, 2)}\n`);
process.exit(report.findings.length ? 1 : 0);
