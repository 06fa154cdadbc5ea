/**
 * The receiver's CPU per GiB of a full cycle, alone: the vmlift variant of data-plane-floor.ts
 * (agent + receiver over loopback TLS, compression 0 unless --compression N) run --rounds times on one generated source,
 * for quick before/after comparisons of receive-path changes on a shared machine (CPU seconds, not
 * MB/s, are what compares there).
 *
 *   node --import tsx bench/receiver-cpu.ts [--size 2] [--rounds 3] [--src FILE] [--dir DIR] [--perf FILE] [--strace FILE] [--bins A,B] [--compression 7] [--json]
 *
 * `--bins A,B`: alternate rounds between these vmlift commands (e.g. a copy of the tree before a
 * change, with its own dist/), both agent and receiver, so both see the same load.
 * `--src FILE`: reuse a source generated before (generated there when missing). Profiling the
 * receiver: VMLIFT_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/p' (bin/vmlift). Not part of the test suite.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generateDisk } from '../scripts/lib/gen-disk.ts';
import { NODE, Receiver, agentCycle, log, warm } from './lib/agent-run.ts';

const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '2' },
    rounds: { type: 'string', default: '3' },
    src: { type: 'string' },
    dir: { type: 'string' },
    json: { type: 'boolean', default: false },
    perf: { type: 'string' },
    strace: { type: 'string' },
    bins: { type: 'string' },
    compression: { type: 'string', default: '0' },
  },
});
const GiB = 2 ** 30;
const MiB = 2 ** 20;
const SIZE = Math.round(Number(values.size) * GiB / MiB) * MiB;
const ROUNDS = Math.max(1, Number(values.rounds));

const work = await mkdtemp(join(values.dir ?? tmpdir(), 'vmlift-bench-rxcpu-'));
try {
  const src = values.src ?? join(work, 'full.img');
  if (!existsSync(src) || (await stat(src)).size !== SIZE) {
    log(`generating a ${SIZE / GiB} GiB fully allocated source at ${src}...`);
    await generateDisk({ path: src, size: SIZE, dataFraction: 1, textFraction: 0.5, seed: 42 });
  }
  const rows: { bin: string; round: number; mbps: number; agent: number; receiver: number; receiverRssMiB: number; load: number }[] = [];
  const bins = values.bins ? values.bins.split(',') : [NODE[0]!];
  for (let round = 0; round < ROUNDS * bins.length; round++) {
    const bin = bins[round % bins.length]!;
    NODE[0] = bin;
    await warm(src);
    const r = new Receiver(join(work, `recv-${round}`));
    await r.start();
    try {
      // --perf FILE: `perf record -g` of the receiver process during the cycle (Debian's linux-perf)
      const perf = values.perf ? spawn('perf', ['record', '-e', 'cpu-clock', '-F', '499', '-g', '-q', '-o', `${values.perf}.${round}`, '-p', String(r.proc.pid)], { stdio: 'inherit' }) : null;
      // --strace FILE: `strace -f -c` (system calls counted per kind) of the receiver during the cycle
      const strace = values.strace ? spawn('strace', ['-f', '-c', '-o', `${values.strace}.${round}`, '-p', String(r.proc.pid)], { stdio: 'inherit' }) : null;
      const c = await agentCycle(r, src, join(work, `state-${round}`), Number(values.compression), SIZE);
      if (perf) await new Promise((res) => { perf.once('exit', res); perf.kill('SIGINT'); });
      if (strace) await new Promise((res) => { strace.once('exit', res); strace.kill('SIGINT'); });
      const row = { bin, round, mbps: c.mbps, agent: c.agentCpu / (SIZE / GiB), receiver: c.receiverCpu / (SIZE / GiB), receiverRssMiB: c.receiverRssMiB, load: loadavg()[0]! };
      rows.push(row);
      log(`round ${round} ${bin}: ${row.mbps.toFixed(0)} MB/s, CPU s/GiB agent ${row.agent.toFixed(2)} receiver ${row.receiver.toFixed(2)}, receiver RSS ${row.receiverRssMiB.toFixed(0)} MiB, load ${row.load.toFixed(2)}`);
    } finally {
      await r.stop();
      await rm(join(work, `recv-${round}`), { recursive: true, force: true });
      await rm(join(work, `state-${round}`), { recursive: true, force: true });
    }
  }
  for (const bin of bins) {
    const mine = rows.filter((r) => r.bin === bin);
    const mean = (k: 'mbps' | 'agent' | 'receiver'): number => mine.reduce((n, r) => n + r[k], 0) / mine.length;
    const summary = { bin, sizeGiB: SIZE / GiB, rounds: ROUNDS, mbps: mean('mbps'), agent: mean('agent'), receiver: mean('receiver'), receiverMin: Math.min(...mine.map((r) => r.receiver)), load: loadavg() };
    if (values.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
    else log(`${bin}, mean of ${ROUNDS}: ${summary.mbps.toFixed(0)} MB/s, CPU s/GiB agent ${summary.agent.toFixed(2)}, receiver ${summary.receiver.toFixed(2)} (min ${summary.receiverMin.toFixed(2)}); load ${summary.load.map((l) => l.toFixed(2)).join(' ')}`);
  }
} finally {
  await rm(join(work, 'full.img'), { force: true });
  await rm(work, { recursive: true, force: true });
}
