/*
 * Block digests for vmlift in one pass over a buffer, called through koffi on its worker pool:
 * no JavaScript per block, no copies, no worker-thread messages.
 *
 * SHA-256 comes from the system's OpenSSL libcrypto (SHA-NI where the CPU has it). Only its
 * one-shot function is used; the prototype is declared here so no OpenSSL headers are needed.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);

#define DIGEST_LEN 32

static int all_zero(const uint8_t *p, size_t n) {
  if (n == 0) return 1;
  if (p[0] != 0) return 0;
  /* p[0] == 0 and p[i] == p[i+1] for every i: all zero (memcmp is vectorised by libc) */
  return memcmp(p, p + 1, n - 1) == 0;
}

/*
 * For each `block`-sized block of data[0, len) (the last one may be shorter): the first
 * `keep` bytes (1..32) of its SHA-256 into digests[i * keep], and zero[i] = 1 when it is all zeros
 * (its digest is still the SHA-256 of those zeros).
 * When piece_digests is not NULL, also the full SHA-256 of each `piece`-sized piece of the buffer
 * into piece_digests[j * 32].
 * Returns the number of blocks, or -1 on bad arguments.
 */
int64_t vmlift_digest_blocks(const uint8_t *data, size_t len, size_t block, size_t keep,
                             uint8_t *digests, uint8_t *zero, size_t piece, uint8_t *piece_digests) {
  if (block == 0 || keep == 0 || keep > DIGEST_LEN) return -1;
  if (piece_digests && piece == 0) return -1;
  uint8_t md[DIGEST_LEN];
  uint8_t zero_md[DIGEST_LEN];
  size_t zero_md_len = 0;
  size_t n = 0;
  for (size_t off = 0; off < len; off += block, n++) {
    size_t b = len - off < block ? len - off : block;
    const uint8_t *p = data + off;
    int z = all_zero(p, b);
    zero[n] = (uint8_t)z;
    if (z) {
      if (zero_md_len != b) { SHA256(p, b, zero_md); zero_md_len = b; }
      memcpy(digests + n * keep, zero_md, keep);
    } else {
      SHA256(p, b, md);
      memcpy(digests + n * keep, md, keep);
    }
  }
  if (piece_digests) {
    size_t j = 0;
    for (size_t off = 0; off < len; off += piece, j++) {
      size_t b = len - off < piece ? len - off : piece;
      SHA256(data + off, b, piece_digests + j * DIGEST_LEN);
    }
  }
  return (int64_t)n;
}

/* SHA-256 of data[0, len) into md (32 bytes): the receiver's extent check, off the event loop. */
void vmlift_sha256(const uint8_t *data, size_t len, uint8_t *md) {
  SHA256(data, len, md);
}
