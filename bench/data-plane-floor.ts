/**
 * How close can a full cycle get to nbdcopy on this machine? The same source copied by nbdcopy,
 * by vmlift (agent + receiver over loopback TLS, compression 0), and by bench/floor/data-plane-floor.c:
 * the work every implementation of vmlift's data plane must do (read, SHA-256, TLS both ways, check
 * the digest, store durable chunk files), in plain C with nothing else around it.
 *
 *   node --import tsx bench/data-plane-floor.ts [--size 4] [--rounds 2] [--dir DIR] [--json]
 *
 * Floor variants (receiver store mode / agent hash passes):
 *   page-cache/tree  what vmlift does since wire version 2: 4 KiB block digests on the agent and the
 *                 window's tree digest from them (each byte hashed once); the receiver checks it by
 *                 hashing each 4 KiB block; chunk files written through the page cache, syncfs +
 *                 FADV_DONTNEED per batch on the receiver
 *   page-cache/tree-mb  the same with the block digests of native/digest/sha256-4k.c (AVX-512 16
 *                 at a time, the rest SHA-NI 2 interleaved), as vmlift's digester computes them since
 *                 issue 16 item 2 (needs SHA-NI)
 *   page-cache/2  what vmlift did before: 4 KiB block digests + window SHA-256 on the agent
 *   direct/2      the same with O_DIRECT chunk writes
 *   page-cache/1  the agent hashing once (no block digests for the manifest)
 *   none/1        the receiver stores nothing: the cost of TLS + hashing alone
 * Runs alternate over --rounds so that nbdcopy and the others see the same page-cache state on
 * average (on these VMs nbdcopy alone varies a lot run to run). Not part of the test suite.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { generateDisk } from '../scripts/lib/gen-disk.ts';
import { Receiver, agentCycle, freePort, log, timed, warm } from './lib/agent-run.ts';
import { VMLIFT_CIPHERS } from '../src/transfer/tls-suites.ts';

const execFileP = promisify(execFile);
const { values } = parseArgs({
  options: {
    size: { type: 'string', default: '4' },
    rounds: { type: 'string', default: '2' },
    dir: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});
const GiB = 2 ** 30;
const MiB = 2 ** 20;
const SIZE = Math.round(Number(values.size) * GiB / MiB) * MiB;
const ROUNDS = Math.max(1, Number(values.rounds));
const FLOOR_SRC = fileURLToPath(new URL('./floor/data-plane-floor.c', import.meta.url));
const FLOOR_BIN = fileURLToPath(new URL('./floor/build/data-plane-floor', import.meta.url));
const DIGEST_DIR = fileURLToPath(new URL('../native/digest/', import.meta.url));

/** Build the C floor (needs OpenSSL's headers: Debian's libssl-dev, installed here when missing). */
async function buildFloor(): Promise<void> {
  if (!existsSync('/usr/include/openssl/ssl.h')) {
    log('installing libssl-dev (OpenSSL headers for the C floor)...');
    const install = ['apt-get', 'install', '-y', '-q', 'libssl-dev'];
    const [cmd, ...args] = process.getuid?.() === 0 ? install : ['sudo', ...install];
    await execFileP(cmd!, args);
  }
  await mkdir(join(FLOOR_BIN, '..'), { recursive: true });
  await execFileP(process.env.CC ?? 'cc', ['-std=c11', '-O2', '-Wall', '-Wextra', '-I', DIGEST_DIR, '-o', FLOOR_BIN, FLOOR_SRC, join(DIGEST_DIR, 'sha256-4k.c'), '-lssl', '-lcrypto', '-pthread']);
}

interface Run { wall: number; mbps: number; cpu: Record<string, number> }

async function floorRun(work: string, src: string, mode: string, passes: number | 'tree' | 'tree-mb'): Promise<Run> {
  const store = join(work, 'floor-store');
  await rm(store, { recursive: true, force: true });
  await Promise.all(Array.from({ length: 256 }, (_, i) => mkdir(join(store, i.toString(16).padStart(2, '0')), { recursive: true })));
  const port = await freePort();
  const recv = spawn(FLOOR_BIN, ['receive', String(port), store, mode, join(work, 'cert.pem'), join(work, 'key.pem'), ...(typeof passes === 'string' ? [passes] : [])], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  recv.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
  const exited = new Promise<number>((r) => recv.once('exit', (c) => r(c ?? 1)));
  while (!out.includes('listening')) {
    if (recv.exitCode !== null) throw new Error('data-plane-floor receive exited early');
    await new Promise((r) => setTimeout(r, 20));
  }
  const t0 = performance.now();
  const { stdout } = await execFileP(FLOOR_BIN, ['send', '127.0.0.1', String(port), src, String(passes)]);
  if (await exited !== 0) throw new Error('data-plane-floor receive failed');
  const wall = (performance.now() - t0) / 1000;
  await rm(store, { recursive: true, force: true });
  const line = (text: string, name: string): { cpu: number; cipher: string } | undefined =>
    text.split('\n').filter((l) => l.includes(`"side":"${name}"`)).map((l) => JSON.parse(l) as { cpu: number; cipher: string })[0];
  // the floor must do vmlift's work: the suite vmlift's ends negotiate (the first of its order)
  const suite = VMLIFT_CIPHERS.split(':')[0];
  for (const [text, name] of [[stdout, 'send'], [out, 'receive']] as const) {
    const cipher = line(text, name)?.cipher;
    if (cipher !== suite) throw new Error(`data-plane-floor ${name} negotiated ${cipher ?? 'nothing'}, not vmlift's ${suite}`);
  }
  const side = (text: string, name: string): number => line(text, name)?.cpu ?? NaN;
  return { wall, mbps: SIZE / 1e6 / wall, cpu: { agent: side(stdout, 'send'), receiver: side(out, 'receive') } };
}

async function nbdcopyRun(work: string, src: string): Promise<Run> {
  const out = join(work, 'nbdcopy.raw');
  const u = await timed(['nbdcopy', '--', '[', 'nbdkit', '--exit-with-parent', '-r', 'file', src, ']', out]);
  await rm(out, { force: true });
  return { wall: u.wall, mbps: SIZE / 1e6 / u.wall, cpu: { nbdcopy: u.cpu } };
}

async function vmliftRun(work: string, src: string, round: number): Promise<Run> {
  const r = new Receiver(join(work, `recv-${round}`));
  await r.start();
  try {
    const c = await agentCycle(r, src, join(work, `state-${round}`), 0, SIZE);
    return { wall: c.wall, mbps: c.mbps, cpu: { agent: c.agentCpu, receiver: c.receiverCpu } };
  } finally {
    await r.stop();
    await rm(join(work, `recv-${round}`), { recursive: true, force: true });
    await rm(join(work, `state-${round}`), { recursive: true, force: true });
  }
}

const VARIANTS: [string, (work: string, src: string, round: number) => Promise<Run>][] = [
  ['nbdcopy (nbdkit file → file)', (w, s) => nbdcopyRun(w, s)],
  ['vmlift agent → receiver, compression 0', vmliftRun],
  ['floor page-cache/2 (vmlift\'s work before wire version 2)', (w, s) => floorRun(w, s, 'page-cache', 2)],
  ['floor page-cache/tree (vmlift\'s work with OpenSSL block digests)', (w, s) => floorRun(w, s, 'page-cache', 'tree')],
  ['floor page-cache/tree-mb (vmlift\'s work now: AVX-512 / SHA-NI multi-buffer)', (w, s) => floorRun(w, s, 'page-cache', 'tree-mb')],
  ['floor direct/2', (w, s) => floorRun(w, s, 'direct', 2)],
  ['floor page-cache/1', (w, s) => floorRun(w, s, 'page-cache', 1)],
  ['floor none/1 (no store)', (w, s) => floorRun(w, s, 'none', 1)],
];

await buildFloor();
const work = await mkdtemp(join(values.dir ?? tmpdir(), 'vmlift-bench-floor-'));
const runs = new Map<string, Run[]>(VARIANTS.map(([name]) => [name, []]));
try {
  const src = join(work, 'full.img');
  log(`generating a ${SIZE / GiB} GiB fully allocated source...`);
  await generateDisk({ path: src, size: SIZE, dataFraction: 1, textFraction: 0.5, seed: 42 });
  await execFileP('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout',
    join(work, 'key.pem'), '-out', join(work, 'cert.pem'), '-days', '1', '-subj', '/CN=floor']);
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, run] of VARIANTS) {
      await warm(src);
      const r = await run(work, src, round);
      runs.get(name)!.push(r);
      log(`  round ${round + 1}: ${name}: ${r.mbps.toFixed(0)} MB/s`);
    }
  }
} finally {
  await rm(work, { recursive: true, force: true });
}

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
const nbdcopyMbps = mean(runs.get(VARIANTS[0]![0])!.map((r) => r.mbps));
const floorMbps = mean(runs.get(VARIANTS[2]![0])!.map((r) => r.mbps));
const treeFloorMbps = mean(runs.get(VARIANTS[3]![0])!.map((r) => r.mbps));
const rows = VARIANTS.map(([name]) => {
  const rs = runs.get(name)!;
  const mbps = mean(rs.map((r) => r.mbps));
  const cpuPerGiB = Object.fromEntries(Object.keys(rs[0]!.cpu).map((k) => [k, mean(rs.map((r) => r.cpu[k]!)) / (SIZE / GiB)]));
  return { name, mbps, runs: rs.map((r) => Math.round(r.mbps)), vsNbdcopy: mbps / nbdcopyMbps, vsFloor: mbps / floorMbps, vsTreeFloor: mbps / treeFloorMbps, cpuPerGiB };
});
if (values.json) {
  process.stdout.write(`${JSON.stringify({ sizeBytes: SIZE, rounds: ROUNDS, node: process.version, rows }, null, 2)}\n`);
} else {
  process.stdout.write([
    `data-plane floor: ${SIZE / GiB} GiB fully allocated source, loopback TLS, ${ROUNDS} rounds (mean; each run in brackets)`,
    '',
    '| run | MB/s | / nbdcopy | / floor page-cache/2 | / floor page-cache/tree | CPU s per GiB |',
    '|---|---|---|---|---|---|',
    ...rows.map((r) => `| ${r.name} | ${r.mbps.toFixed(0)} [${r.runs.join(', ')}] | ${r.vsNbdcopy.toFixed(2)} | ${r.vsFloor.toFixed(2)} | ${r.vsTreeFloor.toFixed(2)} | ${Object.entries(r.cpuPerGiB).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')} |`),
    '',
  ].join('\n'));
}
