/**
 * SHA-256 and tree-digest work (util/tree-digest.ts) in native code (native/digest/: AVX-512 or SHA-NI with
 * interleaved 4 KiB blocks where the CPU has it, else OpenSSL's libcrypto), run by koffi off the
 * event loop: no JavaScript per 4 KiB block, no copies, no messages to worker threads, so block
 * digests cost a fraction of `crypto.hash` in a worker (docs/transfer.md, Measurements). Absent
 * (not built, another OS, or VMLIFT_NO_NATIVE_DIGEST=1), callers use Node's crypto instead and get
 * the same digests. Where the CPU has both AVX-512 and SHA-NI, the library times both once when it
 * loads and takes the faster (`probe`). VMLIFT_DIGEST_IMPL (read once, when it loads) forces one:
 * `sha-ni`, `avx512` (with SHA-NI for a batch's remainder), or `openssl` (every block by libcrypto);
 * unset or `auto`, the probe decides. Any other value is refused when the library loads.
 */
import { existsSync } from 'node:fs';
import { constants as osc } from 'node:os';
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
  /** What hashes whole 4 KiB blocks: `avx512-x16` or `sha-ni-x2` (native/digest/sha256-4k.c), or `openssl`. */
  implementation: string;
  /** The load-time probe's MB/s per core of each whole-block path (0: not timed, the CPU lacks one of them). */
  probe: { shaNiMBps: number; avx512MBps: number };
  /**
   * Digests of the `block`-sized blocks of `data`, and with `piece` (then `block` must be 4096 and
   * `piece` a multiple of it) the tree digests of its `piece`-sized pieces, from the same pass.
   */
  blocks(data: Uint8Array, block: number, keep: number, piece?: number): Promise<BlockDigests>;
  /** Tree digest (util/tree-digest.ts) of `data`. */
  tree(data: Uint8Array): Promise<Buffer>;
  /**
   * The same on this thread, for inputs up to INLINE_HASH_MAX: one native call instead of a
   * JavaScript hash call per 4 KiB block (docs/store.md, "Incremental cycles on the receiver").
   */
  treeHere(data: Uint8Array): Buffer;
  /** SHA-256 of `data`. */
  sha256(data: Uint8Array): Promise<Buffer>;
  /**
   * On this thread (a few µs per window): the first `width` bytes of each of the `n` digests in
   * `digests` (`stride` bytes apart) into `fresh`, and `changed[i]` = 1 where they differ from
   * `old`'s. Returns the number of changed blocks.
   */
  compareBlocks(digests: Uint8Array, n: number, stride: number, width: number, old: Uint8Array, fresh: Uint8Array, changed: Uint8Array): number;
  /**
   * In one call off the event loop: the tree digest of `data`; when it equals `expected`, `ref`
   * appended to the file `refsFd` (opened to append; -1: none), then `head` written at `at` of the
   * file `fd` and `data` right after it. Resolves null when written, the computed digest when it
   * differs (nothing written); rejects with the errno's code (ENOSPC, EIO, …) when a write failed.
   */
  storeChecked(data: Uint8Array, expected: Uint8Array, refsFd: number, ref: Uint8Array | null, fd: number, at: number, head: Uint8Array): Promise<Buffer | null>;
}

const DEFAULT_LIB = join(PROJECT_ROOT, 'native', 'build', 'libvmlift-digest.so');

let loaded: NativeDigest | null | undefined;

const DIGEST_IMPLS = ['auto', 'sha-ni', 'avx512', 'openssl'];

function load(): NativeDigest | null {
  if (process.env.VMLIFT_NO_NATIVE_DIGEST === '1' || process.platform !== 'linux') return null;
  const forced = process.env.VMLIFT_DIGEST_IMPL;
  if (forced !== undefined && forced !== '' && !DIGEST_IMPLS.includes(forced)) {
    throw new Error(`VMLIFT_DIGEST_IMPL=${forced} is not an implementation of the native digester: use one of ${DIGEST_IMPLS.join(', ')}, or unset it`);
  }
  const path = process.env.VMLIFT_NATIVE_DIGEST_LIB ?? DEFAULT_LIB;
  const koffi = loadKoffi();
  if (!koffi || !existsSync(path)) return null;
  let digestBlocks: KoffiFn; let sha256: KoffiFn; let tree: KoffiFn; let compare: KoffiFn; let impl: KoffiFn; let probe: KoffiFn; let storeChecked: KoffiFn;
  try {
    const lib = koffi.load(path);
    digestBlocks = lib.func('int64_t vmlift_digest_blocks(const uint8_t *data, size_t len, size_t block, size_t keep, uint8_t *digests, uint8_t *zero, size_t piece, uint8_t *piece_digests)');
    sha256 = lib.func('int vmlift_sha256(const uint8_t *data, size_t len, uint8_t *md)');
    tree = lib.func('int vmlift_tree_digest(const uint8_t *data, size_t len, uint8_t *md)');
    impl = lib.func('const char *vmlift_digest_impl(void)');
    probe = lib.func('void vmlift_digest_probe(double *mbps)');
    compare = lib.func('int64_t vmlift_compare_blocks(const uint8_t *digests, size_t n, size_t stride, size_t width, const uint8_t *old, uint8_t *fresh, uint8_t *changed)');
    storeChecked = lib.func('int vmlift_store_checked(const uint8_t *data, size_t len, const uint8_t *expected, uint8_t *md, int refs_fd, const uint8_t *ref, size_t ref_len, int fd, int64_t at, const uint8_t *head, size_t head_len)');
  } catch {
    return null;
  }
  return {
    implementation: String(impl()),
    // asked only when read: with VMLIFT_DIGEST_IMPL forcing a path, the library never needs to time both
    get probe() {
      const mbps = new Float64Array(2);
      probe(mbps);
      return { shaNiMBps: Math.round(mbps[0]!), avx512MBps: Math.round(mbps[1]!) };
    },
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
    async storeChecked(data, expected, refsFd, ref, fd, at, head) {
      if (expected.byteLength !== SHA256_LEN) throw new RangeError('storeChecked: the expected digest is not 32 bytes');
      const md = Buffer.allocUnsafe(SHA256_LEN);
      const r = await callAsync(storeChecked, data, data.byteLength, expected, md, ref ? refsFd : -1, ref, ref?.byteLength ?? 0, fd, at, head, head.byteLength);
      if (r === 0) return null;
      if (r === 1) return md;
      if (r === -100000) throw new Error('native tree digest failed (libcrypto)');
      throw errnoError(-r, 'pwrite');
    },
    async tree(data) {
      const md = Buffer.allocUnsafe(SHA256_LEN);
      if (await callAsync(tree, data, data.byteLength, md) !== 0) throw new Error('native tree digest failed (libcrypto)');
      return md;
    },
    treeHere(data) {
      const md = Buffer.allocUnsafe(SHA256_LEN);
      if (tree(data, data.byteLength, md) !== 0) throw new Error('native tree digest failed (libcrypto)');
      return md;
    },
  };
}

/** An error like Node's own for a failed system call: `code` is the errno's name (ENOSPC, EIO, …). */
function errnoError(errno: number, syscall: string): NodeJS.ErrnoException {
  const code = Object.entries(osc.errno).find(([, v]) => v === errno)?.[0] ?? 'EIO';
  return Object.assign(new Error(`${code}: ${syscall} failed (errno ${errno})`), { code, errno: -errno, syscall });
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
