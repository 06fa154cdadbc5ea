/**
 * The fixed cost of `vmlift agent sync --once` (issue 16): CPU seconds of whole agent runs on a
 * 4 MiB device against a receiver of this tree, and of `vmlift agent sync --help` (start-up and
 * module loading alone), alternating between the --bins commands round by round.
 *
 *   node --import tsx bench/agent-startup.ts [--rounds 5] [--bins A,B]
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { NODE, Receiver, log, timed } from './lib/agent-run.ts';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' }, bins: { type: 'string' } } });
const bins = values.bins ? values.bins.split(',') : [NODE[0]!];
const work = await mkdtemp(join(tmpdir(), 'vmlift-astart-'));
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
try {
  const src = join(work, 'small.img');
  await writeFile(src, randomBytes(4 * 2 ** 20));
  const r = new Receiver(join(work, 'recv'));
  await r.start();
  const codeFile = join(work, 'code');
  await writeFile(codeFile, r.code, { mode: 0o600 });
  const got = new Map<string, { help: number[]; sync: number[] }>(bins.map((b) => [b, { help: [], sync: [] }]));
  try {
    for (let round = 0; round < Number(values.rounds) * bins.length; round++) {
      const bin = bins[round % bins.length]!;
      const help = await timed([bin, 'agent', 'sync', '--help']);
      const sync = await timed([bin, 'agent', 'sync', '--device', src, '--receiver', `127.0.0.1:${r.port}`, '--fingerprint', r.fingerprint,
        '--code-file', codeFile, '--state-dir', join(work, `state-${round}`), '--source-id', `start-${round}`, '--once', '--json', '--compression', '0']);
      got.get(bin)!.help.push(help.cpu); got.get(bin)!.sync.push(sync.cpu);
      log(`round ${round + 1} ${bin}: --help ${help.cpu.toFixed(2)} CPU s, sync --once (4 MiB) ${sync.cpu.toFixed(2)} CPU s, load ${loadavg()[0]!.toFixed(2)}`);
    }
  } finally {
    await r.stop();
  }
  for (const [bin, g] of got) log(`${bin}: median --help ${median(g.help).toFixed(3)} CPU s, sync --once ${median(g.sync).toFixed(3)} CPU s (${g.sync.length} runs)`);
} finally {
  await rm(work, { recursive: true, force: true });
}
