/**
 * The native digester gives the digests of Node's crypto and of the TypeScript tree digest with
 * each implementation of its 4 KiB blocks (AVX-512 16 at a time: forced by VMLIFT_DIGEST_IMPL=avx512,
 * SHA-NI with 2 interleaved: =sha-ni, or OpenSSL: =openssl; unset, the faster of the first two by the
 * library's load-time probe), for lengths around the block size and with all-zero blocks mixed in (so
 * batches hold 16-block groups and odd remainders).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { treeDigest } from '../../src/util/tree-digest.ts';

const execFileP = promisify(execFile);
const CHILD = fileURLToPath(new URL('./native-digest-child.ts', import.meta.url));
const MiB = 1024 * 1024;
const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();
const flags = /^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.split(/\s+/) ?? [];
const cpuHasSha = flags.includes('sha_ni');
const cpuHasAvx512 = flags.includes('avx512f') && flags.includes('avx512bw');
type Probe = { shaNiMBps: number; avx512MBps: number };
/** The implementation the library must pick on this CPU for a VMLIFT_DIGEST_IMPL setting, given its load-time probe. */
function implementationFor(setting: string | undefined, probe: Probe): string {
  if (setting === 'openssl') return 'openssl';
  if (setting === 'avx512' && cpuHasAvx512) return 'avx512-x16';
  if (setting === undefined && cpuHasAvx512 && (!cpuHasSha || probe.avx512MBps > probe.shaNiMBps)) return 'avx512-x16';
  return cpuHasSha ? 'sha-ni-x2' : 'openssl';
}

/** Random data of `len` bytes with the 4 KiB blocks at `zeros` (negative: from the end) all zero. */
function sample(len: number, zeros: number[] = []): Buffer {
  const b = randomBytes(len);
  const n = Math.ceil(len / 4096);
  for (const z of zeros) {
    const i = z < 0 ? n + z : z;
    if (i >= 0 && i < n) b.fill(0, i * 4096, Math.min(len, (i + 1) * 4096));
  }
  return b;
}

const CASES: Buffer[] = [
  sample(0), sample(1), sample(4095), sample(4096), sample(4097), sample(4097, [0]), sample(8192, [1]),
  sample(3 * 4096, [1]), // an odd number of blocks around a zero one
  sample(MiB), sample(MiB, [0, 3, 100, 101, 128, -1]),
  sample(MiB + 123, [2, -2]), sample(MiB + 123, [-1]),
  Buffer.alloc(64 * 1024 + 5), // all zeros
  (() => { const b = sample(MiB, [5]); b[5 * 4096 + 4095] = 1; return b; })(), // zero but for the last byte
];

function expected(data: Buffer): Record<string, string> {
  const blocksOf = (size: number, keep: number): Buffer[] => {
    const out: Buffer[] = [];
    for (let o = 0; o < data.length; o += size) out.push(sha(data.subarray(o, Math.min(data.length, o + size))).subarray(0, keep));
    return out;
  };
  const pieces: Buffer[] = [];
  for (let o = 0; o < data.length; o += 65536) pieces.push(treeDigest(data.subarray(o, Math.min(data.length, o + 65536))));
  const zero = [];
  for (let o = 0; o < data.length; o += 4096) zero.push(data.subarray(o, Math.min(data.length, o + 4096)).every((x) => x === 0) ? 1 : 0);
  return {
    blocks: Buffer.concat(blocksOf(4096, 32)).toString('hex'),
    zero: zero.join(''),
    whole: data.length ? treeDigest(data).toString('hex') : '',
    kept16: Buffer.concat(blocksOf(4096, 16)).toString('hex'),
    pieces: Buffer.concat(pieces).toString('hex'),
    blocks512: Buffer.concat(blocksOf(512, 32)).toString('hex'),
    tree: treeDigest(data).toString('hex'),
    sha256: sha(data).toString('hex'),
  };
}

async function runChild(dir: string, impl: string | undefined): Promise<{ implementation: string; probe: Probe; out: (Record<string, string> & { len: number })[] }> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.VMLIFT_DIGEST_IMPL;
  if (impl) env.VMLIFT_DIGEST_IMPL = impl;
  const { stdout } = await execFileP(process.execPath, ['--import', 'tsx', '--no-warnings=ExperimentalWarning', CHILD, join(dir, 'cases.bin'), join(dir, 'lengths.json')],
    { env, maxBuffer: 64 * MiB });
  return JSON.parse(stdout) as never;
}

test('native digests equal Node crypto and the TypeScript tree digest, with the probe\'s choice and with AVX-512, SHA-NI and OpenSSL forced', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-digest-impl-'));
  try {
    await writeFile(join(dir, 'cases.bin'), Buffer.concat(CASES));
    await writeFile(join(dir, 'lengths.json'), JSON.stringify(CASES.map((c) => c.length)));
    const want = CASES.map(expected);
    for (const impl of [undefined, 'avx512', 'sha-ni', 'openssl']) {
      const got = await runChild(dir, impl);
      if (cpuHasSha && cpuHasAvx512) {
        assert.ok(got.probe.shaNiMBps > 100 && got.probe.avx512MBps > 100, `the probe timed both paths: ${JSON.stringify(got.probe)}`);
      } else {
        assert.ok(got.probe.shaNiMBps === 0 && got.probe.avx512MBps === 0, 'no probe without both paths');
      }
      assert.equal(got.implementation, implementationFor(impl, got.probe),
        `VMLIFT_DIGEST_IMPL=${impl ?? '(unset)'}: unset, the faster path by the probe (${JSON.stringify(got.probe)}); avx512 or sha-ni where the CPU has it; openssl always`);
      assert.equal(got.out.length, CASES.length);
      for (const [i, c] of CASES.entries()) {
        const { len, ...results } = got.out[i]!;
        assert.equal(len, c.length);
        assert.deepEqual(results, want[i], `case ${i} (${len} bytes), implementation ${got.implementation}`);
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('an unknown VMLIFT_DIGEST_IMPL is refused, naming the values it takes', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-digest-impl-'));
  try {
    await writeFile(join(dir, 'cases.bin'), CASES[3]!);
    await writeFile(join(dir, 'lengths.json'), JSON.stringify([CASES[3]!.length]));
    await assert.rejects(runChild(dir, 'blake3'), (e: Error & { stderr?: string }) => {
      assert.match(e.stderr ?? '', /VMLIFT_DIGEST_IMPL=blake3 is not an implementation .*auto, sha-ni, avx512, openssl/);
      return true;
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
