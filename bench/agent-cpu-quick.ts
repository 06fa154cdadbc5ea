/**
 * Quick agent-CPU check while working on the sender (issue 16): one full cycle at compression 0 of a
 * fully allocated source, agent + receiver as child processes, N rounds; prints CPU s per GiB per
 * side. VMLIFT_AGENT_NODE_ARGS is passed to the agent only (profiling).
 *
 *   node --import tsx bench/agent-cpu-quick.ts [--size 2] [--rounds 2] [--src FILE] [--compression 0] [--bins A,B]
 *
 * `--bins A,B`: the agent alternates between these vmlift commands round by round (e.g. a copy of the
 * tree before a change, with its own dist/), against this tree's receiver; --rounds per command.
 */
import { mkdtemp, rm, writeFile, stat } from 'node:fs/promises';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generateDisk } from '../scripts/lib/gen-disk.ts';
import { NODE, Receiver, log, timed, warm } from './lib/agent-run.ts';

const { values } = parseArgs({ options: {
  size: { type: 'string', default: '2' }, rounds: { type: 'string', default: '2' },
  src: { type: 'string' }, compression: { type: 'string', default: '0' }, bins: { type: 'string' },
} });
const GiB = 2 ** 30;
const SIZE = Math.round(Number(values.size) * 1024) * 2 ** 20;
const work = await mkdtemp(join(tmpdir(), 'vmlift-acpu-'));
try {
  const src = values.src ?? join(work, 'full.img');
  if (!values.src || !(await stat(src).catch(() => null))) await generateDisk({ path: src, size: SIZE, dataFraction: 1, textFraction: 0.5, seed: 42 });
  const size = (await stat(src)).size;
  const bins = values.bins ? values.bins.split(',') : [NODE[0]!];
  const perBin = new Map<string, number[]>(bins.map((b) => [b, []]));
  for (let round = 0; round < Number(values.rounds) * bins.length; round++) {
    const bin = bins[round % bins.length]!;
    const r = new Receiver(join(work, `recv-${round}`));
    await r.start();
    try {
      await warm(src);
      const codeFile = join(work, `code-${round}`);
      await writeFile(codeFile, r.code, { mode: 0o600 });
      const before = await r.usage();
      const u = await timed([bin, ...NODE.slice(1), 'agent', 'sync', '--device', src, '--receiver', `127.0.0.1:${r.port}`, '--fingerprint', r.fingerprint,
        '--code-file', codeFile, '--state-dir', join(work, `state-${round}`), '--source-id', 'bench', '--once', '--json', '--compression', values.compression!],
      { VMLIFT_NODE_ARGS: process.env.VMLIFT_AGENT_NODE_ARGS ?? '' });
      const after = await r.usage();
      perBin.get(bin)!.push(u.cpu / (size / GiB));
      const row = `round ${round + 1}${bins.length > 1 ? ` ${bin}` : ''}: ${(size / 1e6 / u.wall).toFixed(0)} MB/s, agent ${(u.cpu / (size / GiB)).toFixed(2)} CPU s/GiB (rss ${u.maxRssMiB.toFixed(0)} MiB), receiver ${((after.cpu - before.cpu) / (size / GiB)).toFixed(2)}, load ${loadavg()[0]!.toFixed(2)}`;
      log(row);
    } finally {
      await r.stop();
      await rm(join(work, `recv-${round}`), { recursive: true, force: true });
      await rm(join(work, `state-${round}`), { recursive: true, force: true });
    }
  }
  for (const [bin, cpu] of perBin) {
    const sorted = [...cpu].sort((a, b) => a - b);
    log(`${bin}: agent CPU s/GiB median ${sorted[Math.floor(sorted.length / 2)]!.toFixed(2)} [${sorted[0]!.toFixed(2)}–${sorted[sorted.length - 1]!.toFixed(2)}], ${cpu.length} runs`);
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
