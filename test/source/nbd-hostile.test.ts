/**
 * The NBD client against a hostile NBD server (issue 12 §4): bad magic, wrong and stale handles,
 * short reads, oversized and endless structured replies, block status past the export, and a
 * hostile handshake. Each case ends in a clear NBD error within a bounded time, and the client never
 * allocates a buffer larger than the request or its 256 KiB socket scratch buffer (the server runs
 * in a child process, so only the client's allocations are counted). nbdkit's eval plugin covers a
 * plugin whose extents run past the export: nbdkit itself trims them, and the client reads right.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { NbdSource } from '../../src/source/nbd/index.ts';
import { nbdkit, tempDir, type Server } from './helpers.ts';

const KiB = 1024;
const SCRATCH = 256 * KiB; // the plain-socket read buffer (connection.ts ReadRouter)

let child: ChildProcess;
let port = 0;
before(async () => {
  child = spawn(process.execPath, ['--import', 'tsx', '--no-warnings=ExperimentalWarning', path.join(import.meta.dirname, 'hostile-nbd-server.ts')],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  port = await new Promise<number>((resolve, reject) => {
    child.stdout!.once('data', (b: Buffer) => resolve(Number(b.toString().trim())));
    child.once('exit', (c) => reject(new Error(`hostile server exited ${c}`)));
  });
});
after(() => { child.stdin!.end(); child.kill(); });

/** The largest Buffer the client asks for while `f` runs. */
async function largestAllocation<T>(f: () => Promise<T>): Promise<{ result: PromiseSettledResult<T>; largest: number }> {
  const B = Buffer as unknown as Record<'alloc' | 'allocUnsafe' | 'allocUnsafeSlow', (n: number, ...r: unknown[]) => Buffer>;
  const saved = { alloc: B.alloc, allocUnsafe: B.allocUnsafe, allocUnsafeSlow: B.allocUnsafeSlow };
  let largest = 0;
  for (const k of Object.keys(saved) as Array<keyof typeof saved>) {
    B[k] = function (this: unknown, n: number, ...r: unknown[]) { if (n > largest) largest = n; return saved[k].call(this, n, ...r); };
  }
  try {
    const result = await f().then((value) => ({ status: 'fulfilled' as const, value }), (reason: unknown) => ({ status: 'rejected' as const, reason }));
    return { result, largest };
  } finally {
    Object.assign(B, saved);
  }
}

const open = (name: string) => NbdSource.open(`nbd://127.0.0.1:${port}/${name}`, { retry: { attempts: 1 }, requestTimeoutMs: 2000, connectTimeoutMs: 2000 });

interface Case { name: string; op: (s: NbdSource) => Promise<unknown>; error: RegExp; code?: string }
const read4k = (s: NbdSource) => s.read(8192, 4096);
const extents = (s: NbdSource) => (async () => { const out = []; for await (const e of s.extents(0, 256 * KiB)) out.push(e); return out; })();

const cases: Case[] = [
  { name: 'bad-magic', op: read4k, error: /at offset 8192 .*protocol violation by the server: bad reply magic 0x12345678/ },
  { name: 'wrong-handle', op: read4k, error: /at offset 8192 .*reply for unknown handle 0xdead0000000/ },
  { name: 'stale-handle', op: async (s) => { await s.read(0, 4096); return s.read(8192, 4096); },
    error: /at offset 8192 .*reply for unknown handle 0x000000001 while requests at offsets 8192 were waiting/ },
  { name: 'short-simple', op: read4k, error: /closed the connection in the middle of its reply \(2048 of 4096 bytes received\)/ },
  { name: 'short-structured', op: read4k, error: /closed the connection in the middle of its reply \(3996 of 4096 bytes received\)/ },
  { name: 'huge-data-chunk', op: read4k, error: /data chunk for offset 8192 length 4294967287 outside the read at offset 8192 length 4096/ },
  { name: 'huge-status-chunk', op: extents, error: /block status chunk of 4294967284 bytes .* \(limit \d+\)/ },
  { name: 'big-status-chunk', op: extents, error: /block status chunk of 8388612 bytes in the reply to the block status at offset 0 of 262144 bytes \(limit 2097164\)/ },
  { name: 'huge-error-chunk', op: read4k, error: /error chunk of 2147483647 bytes .*limit 65549/ },
  { name: 'overlap', op: read4k, error: /overlapping data chunks for the read at offset 8192 length 4096/ },
  { name: 'endless-holes', op: read4k, error: /overlapping data chunks/ },
  { name: 'endless-errors', op: read4k, error: /more than 16 error or block status chunks/ },
  { name: 'status-past-end', op: extents, error: /extents run to offset 1310720, past the end of the export \(1048576 bytes\)/ },
  { name: 'status-zero', op: extents, error: /a zero-length extent at offset 4096/ },
  { name: 'status-twice', op: extents, error: /a second block status chunk for base:allocation/ },
  { name: 'status-other-ctx', op: extents, error: /extents for context 99, which was never negotiated/ },
  { name: 'status-short-extent', op: (s) => (async () => { const out = []; for await (const e of s.extents(100, 64 * KiB)) out.push(e); return out; })(),
    error: /the server's extents end at 50, before offset 100, so the scan cannot advance/ },
];

describe('NBD client against a hostile server', () => {
  it('trickle (a byte every 20 ms, never silent): the whole-request deadline ends it', async () => {
    const s = await NbdSource.open(`nbd://127.0.0.1:${port}/trickle`, { retry: { attempts: 1 }, requestTimeoutMs: 200 });
    const t0 = Date.now();
    try {
      await assert.rejects(s.read(8192, 4096), /at offset 8192 .*no complete reply from the server within 2000 ms/);
      const took = Date.now() - t0;
      assert.ok(took >= 1900 && took < 3500, `ended after ${took} ms`);
    } finally { await s.close().catch(() => undefined); }
  });

  for (const c of cases) {
    it(`${c.name}: a clear error, bounded time, no buffer beyond the request`, async () => {
      const t0 = Date.now();
      const { result, largest } = await largestAllocation(async () => {
        const s = await open(c.name);
        try { return await c.op(s); } finally { await s.close().catch(() => undefined); }
      });
      const took = Date.now() - t0;
      assert.equal(result.status, 'rejected', `${c.name} must fail`);
      const e = (result as PromiseRejectedResult).reason as Error & { code?: string; fix?: string };
      assert.match(e.message, c.error);
      assert.ok(['NBD_ERROR', 'SOURCE_READ'].includes(e.code ?? ''), `coded: ${e.code}`);
      assert.ok(e.fix, 'says what to do');
      assert.ok(took < 3000, `${c.name} failed in ${took} ms`);
      assert.ok(largest <= SCRATCH, `${c.name}: largest client allocation ${largest} bytes (bound ${SCRATCH})`);
      console.log(`# ${c.name}: ${took} ms, largest client allocation ${largest} bytes`);
    });
  }

  it('block status reaching past the request (not the export) is allowed and trimmed', async () => {
    const s = await open('status-beyond-request');
    try {
      const out = [];
      for await (const e of s.extents(0, 64 * KiB)) out.push(e);
      assert.deepEqual(out, [{ offset: 0, length: 64 * KiB, data: true }]);
    } finally { await s.close(); }
  });

  it('a well-behaved export on the same server reads right (the double is sound)', async () => {
    const s = await open('good');
    try {
      const b = await s.read(8192, 4096);
      assert.equal(b[0], (8192 * 7 + 3) & 255);
      assert.equal(b[4095], ((8192 + 4095) * 7 + 3) & 255);
    } finally { await s.close(); }
  });

  for (const [name, re] of [
    ['huge-option-reply', /NBD negotiation with .*: option reply of 4294967280 bytes/],
    ['huge-min-block', /minimum block size 2147483648 is not a power of two up to 64 KiB/],
  ] as const) {
    it(`${name}: the handshake is refused, nothing allocated for the claim`, async () => {
      const { result, largest } = await largestAllocation(() => open(name));
      assert.equal(result.status, 'rejected');
      const e = (result as PromiseRejectedResult).reason as Error & { code?: string };
      assert.equal(e.code, 'NBD_OPEN');
      assert.match(e.message, re);
      assert.ok(largest <= SCRATCH, `largest client allocation ${largest} bytes`);
    });
  }
});

describe('nbdkit eval plugin whose extents run past the export', () => {
  const { dir, cleanup } = tempDir('vmlift-nbdh-');
  let srv: (Server & { uri: string }) | undefined;
  after(async () => { await srv?.stop(); cleanup(); });
  it('nbdkit trims them; the client sees extents only inside the export', async () => {
    srv = await nbdkit(dir, 'eval', ['eval', 'get_size=echo 1048576', 'pread=dd if=/dev/zero count=$3 iflag=count_bytes status=none',
      'can_extents=exit 0', 'extents=echo 0 4096 0; echo 4096 100000000 3']);
    const s = await NbdSource.open(srv.uri, { retry: { attempts: 1 } });
    try {
      const out = [];
      for await (const e of s.extents()) out.push(e);
      assert.deepEqual(out, [{ offset: 0, length: 4096, data: true }, { offset: 4096, length: 1048576 - 4096, data: false }]);
    } finally { await s.close(); }
  });
});
