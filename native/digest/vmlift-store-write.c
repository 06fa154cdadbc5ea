/*
 * The receiver's store of one chunk it has not checked yet, in one call on koffi's worker thread:
 * the tree digest of the bytes (vmlift-digest.c), compared with the digest the sender claimed, and
 * only when they match the pack entry's header and the bytes written into the pack file. One
 * thread-pool hop per chunk instead of four (digest, refs.log line, header write, data write), and
 * the check still comes before anything is written (docs/store.md, "Checked appends").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

int vmlift_tree_digest(const uint8_t *data, size_t len, uint8_t *md);

#define DIGEST_LEN 32

/*
 * Write all of buf[0, n) at `at` of fd (at < 0: at its end, for a file opened O_APPEND): 0, or
 * -errno (a short write is retried, so a full disk gives -ENOSPC).
 */
static int write_all(int fd, const uint8_t *buf, size_t n, int64_t at) {
  while (n > 0) {
    ssize_t w = at < 0 ? write(fd, buf, n) : pwrite(fd, buf, n, (off_t)at);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (w == 0) return -EIO;
    buf += w;
    n -= (size_t)w;
    if (at >= 0) at += w;
  }
  return 0;
}

/*
 * The tree digest of data[0, len) into md (32 bytes). When it equals `expected` (32 bytes): when
 * refs_fd >= 0, ref[0, ref_len) appended to it (the cycle's refs.log, opened O_APPEND: the chunk's
 * name is journaled before the chunk exists, as gc needs), then head[0, head_len) written at `at`
 * of fd and the data right after it.
 * Returns 0 when written, 1 when the digest differs (nothing written), -errno when a write failed,
 * -100000 when libcrypto failed.
 */
int vmlift_store_checked(const uint8_t *data, size_t len, const uint8_t *expected, uint8_t *md,
                         int refs_fd, const uint8_t *ref, size_t ref_len,
                         int fd, int64_t at, const uint8_t *head, size_t head_len) {
  if (at < 0) return -EINVAL;
  if (vmlift_tree_digest(data, len, md) != 0) return -100000;
  if (memcmp(md, expected, DIGEST_LEN) != 0) return 1;
  int r = refs_fd >= 0 ? write_all(refs_fd, ref, ref_len, -1) : 0;
  if (r == 0) r = write_all(fd, head, head_len, at);
  if (r == 0) r = write_all(fd, data, len, at + (int64_t)head_len);
  return r;
}
