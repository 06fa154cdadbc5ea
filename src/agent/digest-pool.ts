/**
 * Block digests (the SHA-256 of each block, all 32 bytes: the manifest keeps 16, the tree digest
 * takes all) and all-zero flags, computed off the main thread so hashing a window overlaps reading
 * and sending the previous ones (an incremental cycle hashes every allocated block of every
 * device). The wire digest of the window (its tree digest, util/tree-digest.ts) is derived from the
 * block digests: each byte is hashed once. Native code (util/native-digest.ts) when it is built,
 * else worker threads with Node's crypto; both give the same digests.
 */
import { Worker } from 'node:worker_threads';
import { nativeDigest, type NativeDigest } from '../util/native-digest.ts';
import { WorkerPool } from '../util/worker-pool.ts';
import { TREE_BLOCK, treeDigestFromBlocks, wholeTreeBlocks } from '../util/tree-digest.ts';

/** Bytes of each block digest: the full SHA-256. */
export const BLOCK_DIGEST = 32;

export interface WindowDigests {
  /** BLOCK_DIGEST (32) bytes per block. */
  digests: Buffer;
  /** 1 where the block is all zeros. */
  zero: Uint8Array;
  /**
   * Tree digest of the whole buffer (4 KiB blocks): the wire digest when it goes out as one extent;
   * with a `piece` size asked for, the tree digest of each piece (32 bytes each) instead.
   */
  whole?: Buffer | undefined;
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
    const digests = new Uint8Array(n * 32);
    const zero = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      const b = data.subarray(i * m.blockSize, Math.min(data.length, (i + 1) * m.blockSize));
      let z = zeroBlocks.get(b.length);
      if (!z) { z = Buffer.alloc(b.length); zeroBlocks.set(b.length, z); }
      if (b.equals(z)) zero[i] = 1;
      digests.set(sha256(b), i * 32);
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
  async digest(data: Uint8Array, blockSize: number): Promise<WindowDigests> {
    if (this.native) return this.nativeDigests(data, blockSize);
    const copy = new Uint8Array(data);
    return withWhole(await this.run(copy, blockSize, false), data.byteLength, blockSize, true);
  }

  /**
   * Digests of the blocks of `data`, which the caller hands over: when it is the whole of its own
   * ArrayBuffer it moves to the worker and back without a copy (a 1 MiB copy into fresh memory costs
   * more CPU than the transfer, and each copy is garbage for the main thread's major GC). Use the
   * returned `data`; the argument may be detached (length 0) afterwards. `whole` (4 KiB blocks only):
   * also the tree digest of all of `data`, derived from the block digests (no second pass), or of
   * each `piece` of it (a multiple of 4 KiB).
   */
  async digestOwned(data: Buffer, blockSize: number, whole = true, piece?: number): Promise<WindowDigests & { data: Buffer }> {
    const length = data.byteLength;
    if (this.native) return { ...(await this.nativeDigests(data, blockSize, whole, piece)), data };
    if (!ownsItsBuffer(data)) return { ...withWhole(await this.digest(data, blockSize), length, blockSize, whole, piece), data };
    const r = await this.run(new Uint8Array(data.buffer, 0, length), blockSize, true);
    return { ...withWhole({ digests: r.digests, zero: r.zero }, length, blockSize, whole, piece), data: r.data! };
  }

  /**
   * Native: works on `data` in place (no copy); the caller keeps it untouched until this resolves.
   * `whole`: also the tree digest of all of `data`, from the same pass.
   */
  private async nativeDigests(data: Uint8Array, blockSize: number, whole = true, piece?: number): Promise<WindowDigests> {
    const tree = whole && blockSize === TREE_BLOCK && data.byteLength > 0;
    const r = await this.native!.blocks(data, blockSize, BLOCK_DIGEST, tree ? piece ?? wholeTreeBlocks(data.byteLength) : undefined);
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

/** The worker path's window digest (or piece digests): tree digests from the block digests it returned. */
function withWhole(d: WindowDigests, length: number, blockSize: number, whole: boolean, piece?: number): WindowDigests {
  if (!whole || blockSize !== TREE_BLOCK || length === 0 || d.whole) return d;
  if (piece === undefined) return { ...d, whole: treeDigestFromBlocks(length, d.digests) };
  const perPiece = piece / TREE_BLOCK;
  const out = Buffer.allocUnsafe(Math.ceil(length / piece) * 32);
  for (let p = 0; p * piece < length; p++) {
    treeDigestFromBlocks(Math.min(piece, length - p * piece), d.digests.subarray(p * perPiece * BLOCK_DIGEST, (p + 1) * perPiece * BLOCK_DIGEST)).copy(out, p * 32);
  }
  return { ...d, whole: out };
}

let shared: DigestPool | undefined;
export function sharedDigestPool(): DigestPool {
  shared ??= new DigestPool(2);
  return shared;
}
