/*
 * The receiver's store of one chunk it has not checked yet, in one call on koffi's worker thread:
 * the tree digest of the bytes (vmlift-digest.c), compared with the digest the sender claimed, and
 * only when they match the pack entry's header and the bytes written into the pack file. One
 * thread-pool hop per chunk instead of three (digest, header write, data write), and the check
 * still comes before anything is written (docs/store.md, "Checked appends").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

int vmlift_tree_digest(const uint8_t *data, size_t len, uint8_t *md);

#define DIGEST_LEN 32

/* Write all of buf[0, n) at `at` of fd: 0, or -errno (a short write is retried, so a full disk gives -ENOSPC). */
static int pwrite_all(int fd, const uint8_t *buf, size_t n, int64_t at) {
  while (n > 0) {
    ssize_t w = pwrite(fd, buf, n, (off_t)at);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (w == 0) return -EIO;
    buf += w;
    n -= (size_t)w;
    at += w;
  }
  return 0;
}

/*
 * The tree digest of data[0, len) into md (32 bytes). When it equals `expected` (32 bytes):
 * head[0, head_len) written at `at` of fd and the data right after it, then, with `writeback`,
 * the kernel asked to start writing that range back (sync_file_range SYNC_FILE_RANGE_WRITE: it
 * does not wait, and makes the pack's fsync wait less).
 * Returns 0 when written, 1 when the digest differs (nothing written), -errno when a write failed,
 * -100000 when libcrypto failed.
 */
int vmlift_store_checked(const uint8_t *data, size_t len, const uint8_t *expected, uint8_t *md,
                         int fd, int64_t at, const uint8_t *head, size_t head_len, int writeback) {
  if (vmlift_tree_digest(data, len, md) != 0) return -100000;
  if (memcmp(md, expected, DIGEST_LEN) != 0) return 1;
  int r = pwrite_all(fd, head, head_len, at);
  if (r == 0) r = pwrite_all(fd, data, len, at + (int64_t)head_len);
  if (r == 0 && writeback) sync_file_range(fd, at, (off_t)(head_len + len), SYNC_FILE_RANGE_WRITE);
  return r;
}
