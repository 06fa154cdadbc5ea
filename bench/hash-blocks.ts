/**
 * SHA-256 of 4 KiB blocks on one core (issue 16, item 2): bench/floor/sha256-4k-bench.c, built here,
 * times OpenSSL's EVP one block after the other (the peer, and vmlift's digester before) against
 * native/digest/sha256-4k.c with 1–4 interleaved SHA-NI streams and 16 AVX-512 lanes; MB/s per core
 * and the ratio to OpenSSL. Not part of the test suite.
 *
 *   node --import tsx bench/hash-blocks.ts [--mib 256] [--rounds 3]
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';

const { values } = parseArgs({ options: { mib: { type: 'string', default: '256' }, rounds: { type: 'string', default: '3' } } });
const src = fileURLToPath(new URL('./floor/sha256-4k-bench.c', import.meta.url));
const bin = fileURLToPath(new URL('./floor/build/sha256-4k-bench', import.meta.url));
const digestDir = fileURLToPath(new URL('../native/digest/', import.meta.url));

if (!existsSync('/usr/include/openssl/evp.h')) {
  console.error('hash-blocks: OpenSSL headers missing: run `bash scripts/bench.sh data-plane-floor` once (it installs libssl-dev), or apt-get install libssl-dev');
  process.exit(1);
}
await mkdir(fileURLToPath(new URL('./floor/build/', import.meta.url)), { recursive: true });
await promisify(execFile)(process.env.CC ?? 'cc', ['-std=c11', '-O2', '-I', digestDir, '-o', bin, src, `${digestDir}sha256-4k.c`, '-lcrypto']);
const child = spawn(bin, [String(Number(values.mib)), String(Number(values.rounds))], { stdio: 'inherit' });
process.exitCode = await new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? 1)));
