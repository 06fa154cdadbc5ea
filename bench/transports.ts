/**
 * Read throughput of the disk transports over the same source on loopback.
 *
 *   node --import tsx bench/transports.ts [--size-gib 4] [--rounds 2]
 *
 * One file of SIZE GiB (non-zero, fully allocated) is served by nbdkit's file plugin; our NBD client
 * and `nbdcopy ... null:` (libnbd, the peer tool) read the whole export in the same run, alternating,
 * best of ROUNDS each, and the ratio is printed (target >= 0.9). Then the HTTP datastore reader
 * (Range GETs from a separate HTTPS process) and the VDDK binding over the C double read the same file,
 * the double both from the local file and through libnbd from the same nbdkit export (lab_map mode).
 * Reads are discarded, as nbdcopy's null: does. Not part of the test suite.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BlockSource } from '../src/source/types.ts';
import { NbdSource } from '../src/source/nbd/index.ts';
import { HttpDatastoreSource } from '../src/source/http-datastore/index.ts';
import { VddkSource, shutdownVddk } from '../src/source/vddk/index.ts';

const arg = (name: string, dflt: number): number => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const GiB = 1 << 30;
const size = Math.round(arg('size-gib', 4) * GiB);
const rounds = arg('rounds', 2);
const root = path.resolve(import.meta.dirname, '..');
const dir = mkdtempSync(path.join(os.tmpdir(), 'vmlift-bench-'));
const children: ChildProcess[] = [];
const cleanup = (): void => { for (const c of children) c.kill('SIGTERM'); shutdownVddk(); rmSync(dir, { recursive: true, force: true }); };
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

const mbs = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000);

/** Whole-disk read, maxInFlight at once; with `recycle`, each reader reuses one buffer through readInto(). */
async function readWhole(src: BlockSource, recycle = true, chunk = src.maxReadSize): Promise<number> {
  let next = 0;
  let total = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: src.maxInFlight }, async () => {
    const mine = recycle && src.readInto ? Buffer.allocUnsafe(chunk) : undefined;
    while (next < src.capacity) {
      const off = next;
      const len = Math.min(chunk, src.capacity - off);
      next += len;
      if (mine) {
        await src.readInto!(off, mine.subarray(0, len));
        total += len;
      } else {
        const b = await src.read(off, len);
        total += b.length;
      }
    }
  }));
  if (total !== src.capacity) throw new Error(`read ${total} of ${src.capacity} bytes`);
  return performance.now() - t0;
}

function timeCmd(cmd: string, args: string[]): number {
  const t0 = performance.now();
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  return performance.now() - t0;
}

async function main(): Promise<void> {
  const file = path.join(dir, 'disk.raw');
  console.log(`# transports benchmark: ${(size / GiB).toFixed(2)} GiB source, ${os.cpus().length} CPUs, node ${process.version}`);
  // Non-zero, fully allocated: a 64 MiB random block repeated (generating 4 GiB of randomness would dominate the run).
  const block = Buffer.alloc(64 << 20);
  for (let i = 0; i < block.length; i += 4) block.writeUInt32LE((Math.random() * 0x100000000) >>> 0, i);
  const fd = openSync(file, 'w');
  for (let o = 0; o < size; o += block.length) writeSync(fd, block, 0, Math.min(block.length, size - o), o);
  closeSync(fd);

  const sock = path.join(dir, 'nbd.sock');
  const nbdkit = spawn('nbdkit', ['-f', '--exit-with-parent', '-U', sock, '--read-only', 'file', file], { stdio: 'inherit' });
  children.push(nbdkit);
  while (!existsSync(sock)) await sleep(20);
  const uri = `nbd+unix:///?socket=${sock}`;

  const results: Array<{ what: string; mbs: number; note?: string }> = [];
  let bestPeer = 0;
  let bestOurs = 0;
  let bestAlloc = 0;
  for (let r = 0; r < rounds; r++) {
    const peer = mbs(size, timeCmd('nbdcopy', [uri, 'null:']));
    bestPeer = Math.max(bestPeer, peer);
    const src = await NbdSource.open(uri);
    const ours = mbs(size, await readWhole(src, true));
    const alloc = mbs(size, await readWhole(src, false));
    await src.close();
    bestOurs = Math.max(bestOurs, ours);
    bestAlloc = Math.max(bestAlloc, alloc);
    console.log(`round ${r + 1}: nbdcopy ${peer.toFixed(0)} MB/s, vmlift nbd readInto ${ours.toFixed(0)} MB/s, read ${alloc.toFixed(0)} MB/s`);
  }
  results.push({ what: 'nbdcopy (libnbd) -> null:', mbs: bestPeer });
  results.push({ what: 'vmlift NBD client, readInto (recycled buffers)', mbs: bestOurs, note: `ratio ${(bestOurs / bestPeer).toFixed(2)} (target >= 0.90)` });
  results.push({ what: 'vmlift NBD client, read (a new buffer per read)', mbs: bestAlloc, note: `ratio ${(bestAlloc / bestPeer).toFixed(2)}` });

  // HTTP datastore: Range GETs against a separate HTTPS process serving the same file.
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=localhost',
    '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem')], { stdio: 'ignore' });
  const https = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'bench/https-range-server.ts'), file, path.join(dir, 'cert.pem'), path.join(dir, 'key.pem')],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(https);
  const line = await new Promise<string>((resolve) => createInterface({ input: https.stdout! }).once('line', resolve));
  const port = (JSON.parse(line) as { port: number }).port;
  const fp = new X509Certificate(readFileSync(path.join(dir, 'cert.pem'))).fingerprint256;
  const hsrc = await HttpDatastoreSource.open({ url: `https://127.0.0.1:${port}/folder/disk-flat.vmdk?dcPath=dc&dsName=ds`, trust: { thumbprint: fp } });
  results.push({ what: 'vmlift HTTP datastore (Range GETs, 4 MiB x 8)', mbs: mbs(size, await readWhole(hsrc)) });
  await hsrc.close();

  // VDDK binding over the C double (local file mode), both read paths.
  execFileSync(path.join(root, 'native/build.sh'), { stdio: 'inherit' });
  for (const mode of ['async', 'sync'] as const) {
    const v = await VddkSource.open({ libdir: path.join(root, 'native/build/vddk-double'), diskPath: file, mode, maxReadSize: 2 << 20 });
    results.push({ what: `vmlift VDDK binding, double, ${mode === 'async' ? 'ReadAsync window of 8,' : 'Read'} 2 MiB`, mbs: mbs(size, await readWhole(v)) });
    await v.close();
  }

  // The double in lab_map mode (what the lab tests use): VDDK calls served from the same nbdkit export through libnbd.
  const map = path.join(dir, 'vddk-map.tsv');
  writeFileSync(map, `vm\tvm-1\ndisk\tvm-1\tsnapshot-1\t[ds] b/b.vmdk\t${uri}\t${size}\n`);
  const conf = path.join(dir, 'vddk.conf');
  writeFileSync(conf, `lab_map=${map}\nuser=bench\npassword=bench\n`);
  for (const [kind, max] of [['vcenter', 2 << 20], ['esxi', 23 << 20]] as const) {
    shutdownVddk();
    const v = await VddkSource.open({ libdir: path.join(root, 'native/build/vddk-double'), configFile: conf, server: 'vc.bench', serverKind: kind,
      credentials: { user: 'bench', password: 'bench' }, vm: 'vm-1', snapshot: 'snapshot-1', diskPath: '[ds] b/b.vmdk' });
    results.push({ what: `vmlift VDDK binding, double over libnbd (lab_map), ReadAsync window of 8, ${max >> 20} MiB (${kind})`, mbs: mbs(size, await readWhole(v)) });
    await v.close();
  }

  console.log('\n| reader | MB/s | note |\n|---|---|---|');
  for (const r of results) console.log(`| ${r.what} | ${r.mbs.toFixed(0)} | ${r.note ?? ''} |`);
  console.log(`\npeak RSS ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB`);
}

await main();
process.exit(0);
