/**
 * The receiver's cost of an incremental cycle (issue 16): a real receiver and agent (child
 * processes over loopback TLS) on fully allocated sources of each --sizes GiB: a full cycle, then
 * per round a 1 % scattered 4 KiB change and an incremental, then an incremental with no change.
 * Prints, per incremental: receiver and agent CPU s, wall s, bytes changed, wire bytes, and the
 * receiver's CPU ms per changed MB and per disk GiB.
 *
 *   node --import tsx --no-warnings=ExperimentalWarning bench/receiver-incremental.ts [--sizes 1,4] [--rounds 2] [--compression 7] [--bins A,B] [--prof DIR] [--dir DIR] [--json]
 *
 * One long-lived receiver per command (a production receiver is long-lived: its JIT is warm after
 * the full cycle). `--bins A,B`: these vmlift commands (e.g. a copy of the tree before a change,
 * with its own dist/), each with its own receiver, store and agent state, agent and receiver both;
 * each round's change is synced by each in turn, so both see the same change and load. `--prof DIR`: the receiver runs with --cpu-prof into DIR. `--perf FILE`: `perf record -e
 * cpu-clock -g` of the receiver during each incremental into FILE.<n> (JS frames named through
 * --perf-basic-prof). Not part of the test suite.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generateDisk, changeBlocks } from '../scripts/lib/gen-disk.ts';
import { NODE, Receiver, agentCycle, log, warm, type CycleResult } from './lib/agent-run.ts';

const { values } = parseArgs({
  options: {
    sizes: { type: 'string', default: '1,4' },
    rounds: { type: 'string', default: '2' },
    compression: { type: 'string', default: '7' },
    bins: { type: 'string' },
    prof: { type: 'string' },
    perf: { type: 'string' },
    dir: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const GiB = 2 ** 30;
const MiB = 2 ** 20;
const SIZES = values.sizes!.split(',').filter(Boolean).map((s) => Math.round(Number(s) * GiB / MiB) * MiB);
const ROUNDS = Math.max(1, Number(values.rounds));
const LEVEL = Number(values.compression);
const bins = values.bins ? values.bins.split(',') : [NODE[0]!];

interface Row {
  sizeGiB: number; bin: string; round: number; kind: '1%' | 'none';
  changedBytes: number; wireBytes: number; wall: number; receiverCpu: number; agentCpu: number;
  msPerChangedMB: number | null; msPerDiskGiB: number; load: number;
}
const rows: Row[] = [];

async function startReceiver(dataDir: string, bin: string): Promise<Receiver> {
  NODE[0] = bin;
  const saved = process.env.VMLIFT_NODE_ARGS;
  if (values.prof) process.env.VMLIFT_NODE_ARGS = `${saved ?? ''} --cpu-prof --cpu-prof-dir=${values.prof}`;
  if (values.perf) process.env.VMLIFT_NODE_ARGS = `${process.env.VMLIFT_NODE_ARGS ?? ''} --perf-basic-prof`;
  const r = new Receiver(dataDir);
  try {
    await r.start();
  } finally {
    if (saved === undefined) delete process.env.VMLIFT_NODE_ARGS; else process.env.VMLIFT_NODE_ARGS = saved;
  }
  return r;
}

const work = await mkdtemp(join(values.dir ?? tmpdir(), 'vmlift-bench-rxinc-'));
try {
  for (const size of SIZES) {
    const src = join(work, `src-${size / GiB}.img`);
    const dataDir = join(work, `recv-${size / GiB}`);
    const stateDir = join(work, `state-${size / GiB}`);
    log(`generating a ${size / GiB} GiB fully allocated source...`);
    await generateDisk({ path: src, size, dataFraction: 1, textFraction: 0.5, seed: 42 });
    await warm(src);
    // one long-lived receiver per command, each with its own store and agent state, as in production
    const rs: Receiver[] = [];
    try {
      for (const [b, bin] of bins.entries()) {
        const r = await startReceiver(`${dataDir}-${b}`, bin);
        rs.push(r);
        await warm(src);
        const full = await agentCycle(r, src, `${stateDir}-${b}`, LEVEL, size);
        log(`full ${size / GiB} GiB ${bin}: ${full.wall.toFixed(1)} s, receiver ${full.receiverCpu.toFixed(1)} CPU s, agent ${full.agentCpu.toFixed(1)} CPU s`);
      }
      const run = async (b: number, round: number, kind: Row['kind'], changed: number): Promise<void> => {
        const bin = bins[b]!;
        NODE[0] = bin;
        await warm(src);
        const perf = values.perf ? spawn('perf', ['record', '-e', 'cpu-clock', '-F', '999', '-g', '-q', '-o', `${values.perf}.${rows.length}`, '-p', String(rs[b]!.proc.pid)], { stdio: 'inherit' }) : null;
        const c: CycleResult = await agentCycle(rs[b]!, src, `${stateDir}-${b}`, LEVEL, size);
        if (perf) await new Promise((res) => { perf.once('exit', res); perf.kill('SIGINT'); });
        const row: Row = {
          sizeGiB: size / GiB, bin, round, kind, changedBytes: changed, wireBytes: c.wireBytes, wall: c.wall,
          receiverCpu: c.receiverCpu, agentCpu: c.agentCpu,
          msPerChangedMB: changed ? c.receiverCpu * 1000 / (changed / 1e6) : null,
          msPerDiskGiB: c.receiverCpu * 1000 / (size / GiB), load: loadavg()[0]!,
        };
        rows.push(row);
        log(`${row.sizeGiB} GiB ${kind} round ${round} ${bin}: changed ${(changed / 1e6).toFixed(1)} MB, wire ${(c.wireBytes / 1e6).toFixed(1)} MB, `
          + `wall ${c.wall.toFixed(2)} s, CPU s receiver ${c.receiverCpu.toFixed(2)} agent ${c.agentCpu.toFixed(2)}, `
          + `receiver ms/changed MB ${row.msPerChangedMB?.toFixed(0) ?? '-'}, ms/disk GiB ${row.msPerDiskGiB.toFixed(0)}, load ${row.load.toFixed(2)}`);
      };
      for (let round = 0; round < ROUNDS; round++) {
        const changed = (await changeBlocks(src, 0.01, 100 + round)).bytes;
        // alternate which command goes first, so neither always follows the change's write-back
        for (let k = 0; k < bins.length; k++) await run((k + round) % bins.length, round, '1%', changed);
      }
      for (let b = 0; b < bins.length; b++) await run(b, 0, 'none', 0);
    } finally {
      for (const r of rs) await r.stop();
      await rm(src, { force: true });
      for (let b = 0; b < bins.length; b++) await rm(`${dataDir}-${b}`, { recursive: true, force: true });
    }
  }
} finally {
  await rm(work, { recursive: true, force: true });
}

if (values.json) {
  process.stdout.write(`${JSON.stringify({ level: LEVEL, rows }, null, 2)}\n`);
} else {
  const out = [
    `receiver incremental benchmark: compression ${LEVEL}, node ${process.version}`,
    '',
    '| disk GiB | change | bin | changed MB | wire MB | wall s | receiver CPU s | agent CPU s | receiver ms/changed MB | receiver ms/disk GiB | load |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
    ...rows.map((r) => `| ${r.sizeGiB} | ${r.kind} | ${r.bin} | ${(r.changedBytes / 1e6).toFixed(1)} | ${(r.wireBytes / 1e6).toFixed(1)} | ${r.wall.toFixed(2)} | `
      + `${r.receiverCpu.toFixed(2)} | ${r.agentCpu.toFixed(2)} | ${r.msPerChangedMB?.toFixed(0) ?? '–'} | ${r.msPerDiskGiB.toFixed(0)} | ${r.load.toFixed(2)} |`),
  ];
  process.stdout.write(`${out.join('\n')}\n`);
}
