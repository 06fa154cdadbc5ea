/**
 * Block digests (first 16 bytes of SHA-256 per block) and all-zero flags, computed off the main
 * thread so hashing a window overlaps reading and sending the previous ones (an incremental
 * cycle hashes every allocated block of every device). Native code (util/native-digest.ts) when
 * it is built, else worker threads with Node's crypto; both give the same digests.
 */
import { Worker } from 'node:worker_threads';
import { nativeDigest, type NativeDigest } from '../util/native-digest.ts';
import { WorkerPool } from '../util/worker-pool.ts';

export interface WindowDigests {
  /** 16 bytes per block. */
  digests: Buffer;
  /** 1 where the block is all zeros. */
  zero: Uint8Array;
  /** SHA-256 of the whole buffer (native only): the wire digest when it goes out as one extent. */
  whole?: Buffer;
}

// Plain JS run with eval: workers need no TypeScript loader.
const WORKER_SRC = `
const { parentPort } = require('node:worker_threads');
const crypto = require('node:crypto');
// One-shot crypto.hash (Node >= 20.12) skips a Hash object per 4 KiB block, which at this block size
// is much of the cost of createHash().update().digest() (docs/agent.md, Measurements).
const sha256 = typeof crypto.hash === 'function'
  ? (b) => crypto.hash('sha256', b, 'buffer')
  : (b) => crypto.createHash('sha256').update(b).digest();
const zeroBlocks = new Map();
parentPort.on('message', (m) => {
  try {
    const data = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
    const n = Math.ceil(data.length / m.blockSize);
    const digests = new Uint8Array(n * 16);
    const zero = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      const b = data.subarray(i * m.blockSize, Math.min(data.length, (i + 1) * m.blockSize));
      let z = zeroBlocks.get(b.length);
      if (!z) { z = Buffer.alloc(b.length); zeroBlocks.set(b.length, z); }
      if (b.equals(z)) zero[i] = 1;
      digests.set(sha256(b).subarray(0, 16), i * 16);
    }
    if (m.back) parentPort.postMessage({ id: m.id, digests, zero, data: m.data }, [digests.buffer, zero.buffer, m.data.buffer]);
    else parentPort.postMessage({ id: m.id, digests, zero }, [digests.buffer, zero.buffer]);
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: String(e && e.message || e) });
  }
});
`;

interface Reply { id: number; digests?: Uint8Array; zero?: Uint8Array; data?: Uint8Array; error?: string }

/** Whether `b` is the whole of its own (non-shared) ArrayBuffer, so it can move between threads. */
export function ownsItsBuffer(b: Uint8Array): boolean {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer && b.byteLength > 0;
}

export class DigestPool {
  private readonly pool: WorkerPool<Reply>;
  private readonly native: NativeDigest | null;

  /** `native`: use the native digester when there is one (default). */
  constructor(size = 2, native = true) {
    this.native = native ? nativeDigest() : null;
    this.pool = new WorkerPool<Reply>(size, () => new Worker(WORKER_SRC, { eval: true }));
  }

  /** Digests of the `blockSize` blocks of a copy of `data` (the caller keeps `data`). */
  digest(data: Uint8Array, blockSize: number): Promise<WindowDigests> {
    if (this.native) return this.nativeDigests(data, blockSize);
    const copy = new Uint8Array(data);
    return this.run(copy, blockSize, false);
  }

  /**
   * Digests of the blocks of `data`, which the caller hands over: when it is the whole of its own
   * ArrayBuffer it moves to the worker and back without a copy (a 1 MiB copy into fresh memory costs
   * more CPU than the transfer, and each copy is garbage for the main thread's major GC). Use the
   * returned `data`; the argument may be detached (length 0) afterwards. `whole`: also the SHA-256
   * of all of `data` where that is cheap (native: same call, no thread hop; it is still a second pass).
   */
  async digestOwned(data: Buffer, blockSize: number, whole = true): Promise<WindowDigests & { data: Buffer }> {
    if (this.native) return { ...(await this.nativeDigests(data, blockSize, whole)), data };
    if (!ownsItsBuffer(data)) return { ...(await this.digest(data, blockSize)), data };
    const r = await this.run(new Uint8Array(data.buffer, 0, data.byteLength), blockSize, true);
    return { digests: r.digests, zero: r.zero, data: r.data! };
  }

  /**
   * Native: works on `data` in place (no copy); the caller keeps it untouched until this resolves.
   * `whole`: also the SHA-256 of all of `data` (a second pass over it, in the same call).
   */
  private async nativeDigests(data: Uint8Array, blockSize: number, whole = true): Promise<WindowDigests> {
    const r = await this.native!.blocks(data, blockSize, 16, whole ? data.byteLength : undefined);
    return { digests: r.digests, zero: r.zero, whole: r.pieceDigests };
  }

  private async run(data: Uint8Array, blockSize: number, back: boolean): Promise<WindowDigests & { data?: Buffer }> {
    const r = await this.pool.run({ data, blockSize, back }, [data.buffer as ArrayBuffer]);
    if (r.error !== undefined) throw new Error(`block digest worker: ${r.error}`);
    return {
      digests: Buffer.from(r.digests!.buffer, r.digests!.byteOffset, r.digests!.byteLength), zero: r.zero!,
      data: r.data ? Buffer.from(r.data.buffer, r.data.byteOffset, r.data.byteLength) : undefined,
    };
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}

let shared: DigestPool | undefined;
export function sharedDigestPool(): DigestPool {
  shared ??= new DigestPool(2);
  return shared;
}
