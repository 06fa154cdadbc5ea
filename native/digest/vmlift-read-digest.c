/*
 * Read and digest in one call: the agent's window costs one hand-off to a pool thread instead of
 * two (libuv's for the pread, then koffi's for the digests). The digests are vmlift_digest_blocks'
 * (vmlift-digest.c), called as it is, so whatever makes it faster makes this faster too.
 */
#define _XOPEN_SOURCE 700
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

int64_t vmlift_digest_blocks(const uint8_t *data, size_t len, size_t block, size_t keep,
                             uint8_t *digests, uint8_t *zero, size_t piece, uint8_t *piece_digests);

#define READ_FAILED (-2)
#define READ_ENDED (-3)

/*
 * pread(2) `len` bytes at `offset` of `fd` into buf (as many calls as it takes), then
 * vmlift_digest_blocks over them with the remaining arguments. Returns what vmlift_digest_blocks
 * returns (the number of blocks, or -1), or:
 *   -2 when a read failed: fail[0] = errno, fail[1] = the absolute offset of the failed read;
 *   -3 when the file ended first: fail[1] = the offset where it ended.
 * buf's content is undefined then. fail points to two int64_t (16 bytes, any alignment).
 */
int64_t vmlift_pread_digest_blocks(int fd, int64_t offset, uint8_t *buf, size_t len, size_t block, size_t keep,
                                   uint8_t *digests, uint8_t *zero, size_t piece, uint8_t *piece_digests, uint8_t *fail) {
  if (offset < 0) return -1;
  size_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, buf + done, len - done, (off_t)(offset + (int64_t)done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int64_t out[2] = { n < 0 ? errno : 0, offset + (int64_t)done };
      memcpy(fail, out, sizeof out);
      return n < 0 ? READ_FAILED : READ_ENDED;
    }
    done += (size_t)n;
  }
  return vmlift_digest_blocks(buf, len, block, keep, digests, zero, piece, piece_digests);
}
