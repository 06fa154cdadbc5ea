/*
 * Block digests and tree digests for vmlift, called through koffi on its worker pool: no
 * JavaScript per block, no copies, no worker-thread messages.
 *
 * Whole 4 KiB blocks are hashed by sha256-4k.c, batched: 16 at a time with AVX-512 (~2x OpenSSL's
 * one block after the other, docs/transfer.md), the rest with the x86 SHA extensions, two blocks
 * interleaved (~1.2x), each where CPUID reports it. VMLIFT_DIGEST_IMPL=sha-ni leaves AVX-512 out,
 * =openssl both. Everything else (short blocks, other block sizes, the tree digest over the block
 * digests, other CPUs) goes through the system's OpenSSL libcrypto via EVP with
 * the algorithm fetched once: OpenSSL 3's one-shot SHA256() looks the algorithm up on every call,
 * which costs ~25 % at 4 KiB blocks (docs/transfer.md, Measurements). The prototypes are declared
 * here so no OpenSSL headers are needed.
 *
 * Tree digest (the wire digest of a data extent and the name of a store chunk, docs/design.md,
 * contracts): the SHA-256 of
 *     "vmlift-tree1" (12 bytes) | u64 BE length | SHA-256 of each 4 KiB block, in order
 * where the last block may be short. So the sender, which needs the 4 KiB block digests anyway,
 * derives it from them, and nobody hashes a byte twice.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sha256-4k.h"

typedef struct evp_md_st EVP_MD;
typedef struct evp_md_ctx_st EVP_MD_CTX;
EVP_MD *EVP_MD_fetch(void *libctx, const char *algorithm, const char *properties);
EVP_MD_CTX *EVP_MD_CTX_new(void);
void EVP_MD_CTX_free(EVP_MD_CTX *ctx);
int EVP_DigestInit_ex2(EVP_MD_CTX *ctx, const EVP_MD *type, const void *params);
int EVP_DigestUpdate(EVP_MD_CTX *ctx, const void *d, size_t cnt);
int EVP_DigestFinal_ex(EVP_MD_CTX *ctx, unsigned char *md, unsigned int *s);

#define DIGEST_LEN 32
#define TREE_BLOCK 4096
static const char TREE_TAG[12] = { 'v', 'm', 'l', 'i', 'f', 't', '-', 't', 'r', 'e', 'e', '1' };

static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
/* interleaved blocks per SHA-NI pass: 2 measured fastest here (3 and 4 spill registers) */
#define NI_LANES 2
/* which sha256-4k paths hash whole 4 KiB blocks (SHA256_4K_ bits; 0: OpenSSL) */
static int use_4k;
static void fetch_sha256(void) {
  sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
  const char *impl = getenv("VMLIFT_DIGEST_IMPL");
  if (impl && !strcmp(impl, "openssl")) use_4k = 0;
  else if (impl && !strcmp(impl, "sha-ni")) use_4k = sha256_4k_supported() & SHA256_4K_NI;
  else if (impl && !strcmp(impl, "avx512")) use_4k = sha256_4k_supported();
  else use_4k = sha256_4k_fastest(NULL);
}

/* A digest context of the calling thread (koffi runs async calls on several threads). */
static EVP_MD_CTX *thread_ctx(void) {
  static _Thread_local EVP_MD_CTX *ctx;
  pthread_once(&sha256_once, fetch_sha256);
  if (!ctx) ctx = EVP_MD_CTX_new();
  return ctx;
}

static int sha256(EVP_MD_CTX *c, const uint8_t *d, size_t n, uint8_t *md) {
  unsigned int len;
  return EVP_DigestInit_ex2(c, sha256_md, NULL) == 1 && EVP_DigestUpdate(c, d, n) == 1 && EVP_DigestFinal_ex(c, md, &len) == 1 ? 0 : -1;
}

static int all_zero(const uint8_t *p, size_t n) {
  if (n == 0) return 1;
  if (p[0] != 0) return 0;
  /* p[0] == 0 and p[i] == p[i+1] for every i: all zero (memcmp is vectorised by libc) */
  return memcmp(p, p + 1, n - 1) == 0;
}

/* The tree digest of `len` bytes from the full digests of their 4 KiB blocks. */
static int tree_from_blocks(EVP_MD_CTX *c, size_t len, const uint8_t *block_digests, uint8_t *md) {
  uint8_t head[20];
  memcpy(head, TREE_TAG, 12);
  for (int i = 0; i < 8; i++) head[12 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
  size_t n = (len + TREE_BLOCK - 1) / TREE_BLOCK;
  unsigned int l;
  return EVP_DigestInit_ex2(c, sha256_md, NULL) == 1 && EVP_DigestUpdate(c, head, sizeof head) == 1
      && EVP_DigestUpdate(c, block_digests, n * DIGEST_LEN) == 1 && EVP_DigestFinal_ex(c, md, &l) == 1 ? 0 : -1;
}

/* Blocks hashed per batch: their pointers and digests sit on the stack. */
#define BATCH 64

/* The SHA-256 of every block of a batch: whole 4 KiB blocks queued for sha256-4k, the rest at once. */
struct batch {
  size_t queued;
  const uint8_t *msg[BATCH];
  uint8_t *md[BATCH];
};

static int batch_add(struct batch *q, EVP_MD_CTX *c, const uint8_t *p, size_t b, uint8_t *md) {
  if (use_4k && b == TREE_BLOCK) {
    q->msg[q->queued] = p;
    q->md[q->queued++] = md;
    return 0;
  }
  return sha256(c, p, b, md);
}

static int batch_run(struct batch *q, EVP_MD_CTX *c) {
  size_t i = 0, n = q->queued;
  q->queued = 0;
  if (use_4k & SHA256_4K_AVX512)
    while (n - i >= 16 && sha256_4k_x16(q->msg + i, q->md + i)) i += 16;
  if (use_4k & SHA256_4K_NI) { sha256_4k_many(q->msg + i, q->md + i, n - i, NI_LANES); return 0; }
  for (; i < n; i++) if (sha256(c, q->msg[i], TREE_BLOCK, q->md[i])) return -1;
  return 0;
}

/*
 * For each `block`-sized block of data[0, len) (the last one may be shorter): the first
 * `keep` bytes (1..32) of its SHA-256 into digests[i * keep], and zero[i] = 1 when it is all zeros
 * (its digest is still the SHA-256 of those zeros, computed once per call).
 * When piece_digests is not NULL (block must then be 4096 and piece a multiple of it): also the
 * tree digest of each `piece`-sized piece of the buffer into piece_digests[j * 32], derived from
 * the block digests (no second pass over the bytes).
 * Returns the number of blocks, or -1 on bad arguments or a libcrypto failure.
 */
int64_t vmlift_digest_blocks(const uint8_t *data, size_t len, size_t block, size_t keep,
                             uint8_t *digests, uint8_t *zero, size_t piece, uint8_t *piece_digests) {
  if (block == 0 || keep == 0 || keep > DIGEST_LEN) return -1;
  if (piece_digests && (piece == 0 || block != TREE_BLOCK || piece % TREE_BLOCK != 0)) return -1;
  EVP_MD_CTX *c = thread_ctx();
  if (!c || !sha256_md) return -1;
  /* full digests of the current piece's blocks, for its tree digest */
  uint8_t *full = NULL;
  if (piece_digests && !(full = malloc(piece / TREE_BLOCK * DIGEST_LEN))) return -1;
  uint8_t md[BATCH][DIGEST_LEN];
  struct batch q;
  q.queued = 0;
  uint8_t zero_md[DIGEST_LEN];
  size_t zero_md_len = 0;
  size_t blocks = len / block + (len % block != 0);
  int64_t r = 0;
  for (size_t first = 0; first < blocks && !r; first += BATCH) {
    size_t count = blocks - first < BATCH ? blocks - first : BATCH;
    for (size_t i = 0; i < count && !r; i++) {
      size_t off = (first + i) * block;
      size_t b = len - off < block ? len - off : block;
      const uint8_t *p = data + off;
      int z = all_zero(p, b);
      zero[first + i] = (uint8_t)z;
      if (z) {
        if (zero_md_len != b && sha256(c, p, b, zero_md)) r = -1;
        zero_md_len = b;
        memcpy(md[i], zero_md, DIGEST_LEN);
      } else if (batch_add(&q, c, p, b, md[i])) r = -1;
    }
    if (!r) r = batch_run(&q, c);
    for (size_t i = 0; i < count && !r; i++) {
      size_t off = (first + i) * block;
      size_t b = len - off < block ? len - off : block;
      memcpy(digests + (first + i) * keep, md[i], keep);
      if (full) {
        size_t in_piece = (off % piece) / TREE_BLOCK;
        memcpy(full + in_piece * DIGEST_LEN, md[i], DIGEST_LEN);
        size_t piece_start = off - off % piece;
        size_t piece_end = piece_start + piece < len ? piece_start + piece : len;
        if (off + b == piece_end && tree_from_blocks(c, piece_end - piece_start, full, piece_digests + (off / piece) * DIGEST_LEN)) r = -1;
      }
    }
  }
  free(full);
  return r < 0 ? r : (int64_t)blocks;
}

/* Tree digest of data[0, len) into md (32 bytes): the receiver's extent check and the store's chunk name. */
int vmlift_tree_digest(const uint8_t *data, size_t len, uint8_t *md) {
  EVP_MD_CTX *c = thread_ctx();
  if (!c || !sha256_md) return -1;
  size_t n = (len + TREE_BLOCK - 1) / TREE_BLOCK;
  uint8_t stack[256 * DIGEST_LEN];
  uint8_t *full = n <= 256 ? stack : malloc(n * DIGEST_LEN);
  if (!full) return -1;
  struct batch q;
  q.queued = 0;
  int r = 0;
  for (size_t i = 0; i < n && !r; i++) {
    size_t off = i * TREE_BLOCK;
    r = batch_add(&q, c, data + off, len - off < TREE_BLOCK ? len - off : TREE_BLOCK, full + i * DIGEST_LEN);
    if (!r && q.queued == BATCH) r = batch_run(&q, c);
  }
  if (!r) r = batch_run(&q, c);
  if (!r) r = tree_from_blocks(c, len, full, md);
  if (full != stack) free(full);
  return r;
}

/* What hashes whole 4 KiB blocks in this process: "avx512-x16" (the rest of a batch by SHA-NI when
   the CPU has it, else OpenSSL), "sha-ni-x2" or "openssl". */
const char *vmlift_digest_impl(void) {
  pthread_once(&sha256_once, fetch_sha256);
  return use_4k & SHA256_4K_AVX512 ? "avx512-x16" : use_4k ? "sha-ni-x2" : "openssl";
}

/* The load-time probe of the two whole-block paths (sha256_4k_fastest): MB/s per core of SHA-NI x2
   into mbps[0] and of AVX-512 x16 into mbps[1], 0 for one not timed (the CPU lacks one of them). */
void vmlift_digest_probe(double *mbps) {
  sha256_4k_fastest(mbps);
}

/* SHA-256 of data[0, len) into md (32 bytes). */
int vmlift_sha256(const uint8_t *data, size_t len, uint8_t *md) {
  EVP_MD_CTX *c = thread_ctx();
  if (!c || !sha256_md) return -1;
  return sha256(c, data, len, md);
}

/*
 * The agent's per-window comparison, so no JavaScript runs per 4 KiB block: for each of `n` blocks,
 * the first `width` bytes of its digest (digests[i * stride]) into fresh[i * width] (the new
 * manifest's record) and changed[i] = 1 when they differ from old[i * width] (the previous
 * manifest's). Returns the number of changed blocks, or -1 on bad arguments.
 */
int64_t vmlift_compare_blocks(const uint8_t *digests, size_t n, size_t stride, size_t width,
                              const uint8_t *old, uint8_t *fresh, uint8_t *changed) {
  if (width == 0 || width > stride) return -1;
  int64_t count = 0;
  for (size_t i = 0; i < n; i++) {
    const uint8_t *d = digests + i * stride;
    memcpy(fresh + i * width, d, width);
    int c = memcmp(d, old + i * width, width) != 0;
    changed[i] = (uint8_t)c;
    count += c;
  }
  return count;
}
