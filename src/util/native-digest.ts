/**
 * SHA-256 and tree-digest work (util/tree-digest.ts) in native code (native/digest/, over OpenSSL's libcrypto), run by koffi off the
 * event loop: no JavaScript per 4 KiB block, no copies, no messages to worker threads, so block
 * digests cost a fraction of `crypto.hash` in a worker (docs/transfer.md, Measurements). Absent
 * (not built, another OS, or VMLIFT_NO_NATIVE_DIGEST=1), callers use Node's crypto instead and get
 * the same digests.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PROJECT_ROOT } from './root.ts';
import { callAsync, loadKoffi, type KoffiFn } from './koffi.ts';

export const SHA256_LEN = 32;

/**
 * Inputs up to this size are better hashed on the calling thread: hashing them costs less than
 * handing them to a thread (a koffi call or a worker message; docs/transfer.md, Measurements).
 * Incremental cycles are made of such small extents.
 */
export const INLINE_HASH_MAX = 256 * 1024;

export interface BlockDigests {
  /** `keep` bytes of SHA-256 per block. */
  digests: Buffer;
  /** 1 where the block is all zeros. */
  zero: Uint8Array;
  /** With `piece`: the tree digest of each piece (32 bytes each), derived from the block digests. */
  pieceDigests?: Buffer;
}

export interface NativeDigest {
  /**
   * Digests of the `block`-sized blocks of `data`, and with `piece` (then `block` must be 4096 and
   * `piece` a multiple of it) the tree digests of its `piece`-sized pieces, from the same pass.
   */
  blocks(data: Uint8Array, block: number, keep: number, piece?: number): Promise<BlockDigests>;
  /** Tree digest (util/tree-digest.ts) of `data`. */
  tree(data: Uint8Array): Promise<Buffer>;
  /** SHA-256 of `data`. */
  sha256(data: Uint8Array): Promise<Buffer>;
  /**
   * On this thread (a few µs per window): the first `width` bytes of each of the `n` digests in
   * `digests` (`stride` bytes apart) into `fresh`, and `changed[i]` = 1 where they differ from
   * `old`'s. Returns the number of changed blocks.
   */
  compareBlocks(digests: Uint8Array, n: number, stride: number, width: number, old: Uint8Array, fresh: Uint8Array, changed: Uint8Array): number;
}

const DEFAULT_LIB = join(PROJECT_ROOT, 'native', 'build', 'libvmlift-digest.so');

let loaded: NativeDigest | null | undefined;

function load(): NativeDigest | null {
  if (process.env.VMLIFT_NO_NATIVE_DIGEST === '1' || process.platform !== 'linux') return null;
  const path = process.env.VMLIFT_NATIVE_DIGEST_LIB ?? DEFAULT_LIB;
  const koffi = loadKoffi();
  if (!koffi || !existsSync(path)) return null;
  let digestBlocks: KoffiFn; let sha256: KoffiFn; let tree: KoffiFn; let compare: KoffiFn;
  try {
    const lib = koffi.load(path);
    digestBlocks = lib.func('int64_t vmlift_digest_blocks(const uint8_t *data, size_t len, size_t block, size_t keep, uint8_t *digests, uint8_t *zero, size_t piece, uint8_t *piece_digests)');
    sha256 = lib.func('int vmlift_sha256(const uint8_t *data, size_t len, uint8_t *md)');
    tree = lib.func('int vmlift_tree_digest(const uint8_t *data, size_t len, uint8_t *md)');
    compare = lib.func('int64_t vmlift_compare_blocks(const uint8_t *digests, size_t n, size_t stride, size_t width, const uint8_t *old, uint8_t *fresh, uint8_t *changed)');
  } catch {
    return null;
  }
  return {
    async blocks(data, block, keep, piece) {
      const n = Math.ceil(data.byteLength / block);
      const digests = Buffer.allocUnsafe(n * keep);
      const zero = new Uint8Array(n);
      const pieceDigests = piece ? Buffer.allocUnsafe(Math.ceil(data.byteLength / piece) * SHA256_LEN) : null;
      const r = await callAsync(digestBlocks, data, data.byteLength, block, keep, digests, zero, piece ?? 0, pieceDigests);
      if (r !== n) throw new Error(`native block digests: ${r} blocks instead of ${n} (bad arguments)`);
      return pieceDigests ? { digests, zero, pieceDigests } : { digests, zero };
    },
    async sha256(data) {
      const md = Buffer.allocUnsafe(SHA256_LEN);
      if (await callAsync(sha256, data, data.byteLength, md) !== 0) throw new Error('native SHA-256 failed (libcrypto)');
      return md;
    },
    compareBlocks(digests, n, stride, width, old, fresh, changed) {
      if (digests.byteLength < n * stride || old.byteLength < n * width || fresh.byteLength < n * width || changed.byteLength < n) {
        throw new RangeError(`compareBlocks: buffers too short for ${n} blocks`);
      }
      const r = compare(digests, n, stride, width, old, fresh, changed);
      if (r < 0) throw new Error('native block comparison: bad arguments');
      return r;
    },
    async tree(data) {
      const md = Buffer.allocUnsafe(SHA256_LEN);
      if (await callAsync(tree, data, data.byteLength, md) !== 0) throw new Error('native tree digest failed (libcrypto)');
      return md;
    },
  };
}

/** The library file of the native digester, when this process uses one (codec workers load it too). */
export function nativeDigestLibrary(): string | null {
  return nativeDigest() ? process.env.VMLIFT_NATIVE_DIGEST_LIB ?? DEFAULT_LIB : null;
}

/** The native digester of this process, or null when it is not available. */
export function nativeDigest(): NativeDigest | null {
  if (loaded === undefined) loaded = load();
  return loaded;
}
