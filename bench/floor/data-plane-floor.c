/*
 * The floor of a full cycle's required work on this machine, in plain C with no framework around
 * it: what any implementation of vmlift's data plane must do per byte, done once, in one thread
 * per side. bench/data-plane-floor.ts runs it next to nbdcopy and vmlift.
 *
 *   send HOST PORT SOURCE PASSES    read SOURCE in 1 MiB windows (pread), hash each (PASSES=2: the
 *                                   4 KiB block digests of the agent's manifest and the window's
 *                                   SHA-256 as vmlift's agent did before wire version 2; 1: the
 *                                   window's SHA-256 only; tree: the 4 KiB block digests and the
 *                                   window's tree digest from them, as vmlift's agent does; tree-mb:
 *                                   the same with the block digests from native/digest/sha256-4k.c
 *                                   (AVX-512 16 at a time, the rest SHA-NI 2 interleaved), as vmlift's
 *                                   digester does since issue 16 item 2),
 *                                   send a 40-byte header (length, digest) + the window over TLS
 *   receive PORT DIR MODE CERT KEY [tree|tree-mb]  accept one TLS connection, check each window's
 *                                   digest (SHA-256, or with `tree` its tree digest: each 4 KiB block
 *                                   hashed, as vmlift's receiver does; tree-mb: with sha256-4k.c), store it
 *                                   as a chunk file: MODE none (discard), page-cache (as vmlift's
 *                                   store: temp file, syncfs + POSIX_FADV_DONTNEED + rename per
 *                                   batch of 32) or direct (the same with O_DIRECT writes)
 *
 * Each side prints one JSON line: {"side","bytes","wall","cpu","cipher"}. TLS is what vmlift's ends
 * negotiate (src/transfer/tls-suites.ts): TLS 1.3 with AES-128-GCM preferred by both sides and the
 * server's order deciding (AES-NI where the CPU has it).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sha256-4k.h" /* native/digest/, linked by bench/data-plane-floor.ts */

#define WINDOW (1 << 20)
#define BLOCK 4096
#define BATCH 32
#define HEADER 40

/* SHA-256 through EVP with the algorithm fetched once (OpenSSL 3's SHA256() fetches it per call). */
static EVP_MD *md256;
static EVP_MD_CTX *mdctx;
static void md_init(void) {
  if (!md256) { md256 = EVP_MD_fetch(NULL, "SHA256", NULL); mdctx = EVP_MD_CTX_new(); }
}
static void sha256(const unsigned char *d, size_t n, unsigned char *out) {
  unsigned int l;
  md_init();
  EVP_DigestInit_ex2(mdctx, md256, NULL);
  EVP_DigestUpdate(mdctx, d, n);
  EVP_DigestFinal_ex(mdctx, out, &l);
}

/* vmlift's tree digest (src/util/tree-digest.ts) of buf[0, n), given the SHA-256 of its 4 KiB blocks. */
static void tree_digest(size_t n, const unsigned char *blocks, unsigned char *out) {
  unsigned char head[20];
  unsigned int l;
  md_init();
  memcpy(head, "vmlift-tree1", 12);
  for (int i = 0; i < 8; i++) head[12 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
  EVP_DigestInit_ex2(mdctx, md256, NULL);
  EVP_DigestUpdate(mdctx, head, sizeof head);
  EVP_DigestUpdate(mdctx, blocks, (n + 4095) / 4096 * 32);
  EVP_DigestFinal_ex(mdctx, out, &l);
}

static void die(const char *what);

/* multi-buffer: whole blocks through sha256-4k.c as vmlift's digester does (16 at a time with
   AVX-512, the rest 2 interleaved with SHA-NI), a short tail through OpenSSL */
static int mb;
static void block_digests(const unsigned char *buf, size_t n, unsigned char *blocks) {
  size_t whole = 0;
  if (mb) {
    const uint8_t *msg[WINDOW / 4096];
    uint8_t *md[WINDOW / 4096];
    for (whole = 0; (whole + 1) * 4096 <= n; whole++) { msg[whole] = buf + whole * 4096; md[whole] = blocks + 32 * whole; }
    size_t i = 0;
    if (mb & SHA256_4K_AVX512)
      while (whole - i >= 16 && sha256_4k_x16(msg + i, md + i)) i += 16;
    sha256_4k_many(msg + i, md + i, whole - i, 2);
  }
  for (size_t b = whole * 4096; b < n; b += 4096) sha256(buf + b, n - b < 4096 ? n - b : 4096, blocks + 32 * (b / 4096));
}

static void use_mb(void) {
  if (!(sha256_4k_supported() & SHA256_4K_NI)) die("tree-mb: no SHA extensions on this CPU");
  mb = sha256_4k_fastest(NULL); /* the paths vmlift's digester takes here */
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* vmlift's TLS 1.3 order (src/transfer/tls-suites.ts); the floor negotiates the same suite. */
static const char *const SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

static void report(const char *side, double t0, long long bytes, const SSL *s) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
               (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
  printf("{\"side\":\"%s\",\"bytes\":%lld,\"wall\":%.3f,\"cpu\":%.3f,\"cipher\":\"%s\"}\n", side, bytes, now() - t0, cpu, SSL_get_cipher_name(s));
  fflush(stdout);
}

static void die(const char *what) {
  fprintf(stderr, "data-plane-floor: %s\n", what);
  ERR_print_errors_fp(stderr);
  exit(1);
}

static int read_full(SSL *s, unsigned char *b, size_t n) {
  size_t got = 0;
  while (got < n) {
    int r = SSL_read(s, b + got, (int)(n - got));
    if (r <= 0) return got == 0 ? 0 : -1;
    got += (size_t)r;
  }
  return 1;
}

struct pending { int fd; char path[600]; };

static void finish_batch(struct pending *p, int *np, int drop_cache) {
  if (*np == 0) return;
  if (syncfs(p[0].fd) != 0) die("syncfs");
  for (int k = 0; k < *np; k++) {
    if (drop_cache) posix_fadvise(p[k].fd, 0, 0, POSIX_FADV_DONTNEED);
    close(p[k].fd);
    char final[620];
    snprintf(final, sizeof final, "%s.chunk", p[k].path);
    if (rename(p[k].path, final) != 0) die("rename");
  }
  *np = 0;
}

static int receive(int argc, char **argv) {
  if (argc != 7 && argc != 8) die("usage: receive PORT DIR MODE CERT KEY [tree|tree-mb]");
  int tree = argc == 8 && (!strcmp(argv[7], "tree") || !strcmp(argv[7], "tree-mb"));
  if (argc == 8 && !strcmp(argv[7], "tree-mb")) use_mb();
  static unsigned char blocks[32 * (WINDOW / 4096)];
  int port = atoi(argv[2]);
  const char *dir = argv[3], *mode = argv[4];
  int direct = !strcmp(mode, "direct"), store = direct || !strcmp(mode, "page-cache");
  if (!store && strcmp(mode, "none")) die("MODE is none, page-cache or direct");
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx || SSL_CTX_use_certificate_file(ctx, argv[5], SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, argv[6], SSL_FILETYPE_PEM) != 1) die("certificate");
  if (SSL_CTX_set_ciphersuites(ctx, SUITES) != 1) die("cipher suites");
  SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1)) die("listen");
  printf("{\"listening\":%d}\n", port);
  fflush(stdout);
  int fd = accept(ls, NULL, NULL);
  SSL *s = SSL_new(ctx);
  SSL_set_fd(s, fd);
  if (SSL_accept(s) != 1) die("TLS accept");
  unsigned char *buf, hdr[HEADER], md[SHA256_DIGEST_LENGTH];
  if (posix_memalign((void **)&buf, 4096, WINDOW)) die("memory");
  struct pending batch[BATCH];
  int np = 0;
  long long total = 0, i = 0;
  double t0 = now();
  for (;;) {
    int r = read_full(s, hdr, HEADER);
    if (r == 0) break;
    if (r < 0) die("short header");
    uint64_t len;
    memcpy(&len, hdr, 8);
    if (len == 0 || len > WINDOW || read_full(s, buf, len) != 1) die("bad frame");
    if (tree) { block_digests(buf, len, blocks); tree_digest(len, blocks, md); } else sha256(buf, len, md);
    if (memcmp(md, hdr + 8, 32)) die("digest mismatch");
    if (store) {
      struct pending *p = &batch[np];
      snprintf(p->path, sizeof p->path, "%s/%02x/.tmp-%lld", dir, md[0], i);
      int flags = O_WRONLY | O_CREAT | O_EXCL | (direct && len % 4096 == 0 ? O_DIRECT : 0);
      p->fd = open(p->path, flags, 0600);
      if (p->fd < 0 || pwrite(p->fd, buf, len, 0) != (ssize_t)len) die("chunk write");
      if (++np == BATCH) finish_batch(batch, &np, !direct);
    }
    total += (long long)len;
    i++;
  }
  finish_batch(batch, &np, !direct);
  report("receive", t0, total, s);
  return 0;
}

static int send_source(int argc, char **argv) {
  if (argc != 6) die("usage: send HOST PORT SOURCE PASSES");
  int tree = !strcmp(argv[5], "tree") || !strcmp(argv[5], "tree-mb"), passes = tree ? 1 : atoi(argv[5]);
  if (!strcmp(argv[5], "tree-mb")) use_mb();
  struct addrinfo hints = { .ai_family = AF_INET, .ai_socktype = SOCK_STREAM }, *ai;
  if (getaddrinfo(argv[2], argv[3], &hints, &ai)) die("address");
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, ai->ai_addr, ai->ai_addrlen)) die("connect");
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx || SSL_CTX_set_ciphersuites(ctx, SUITES) != 1) die("cipher suites");
  SSL *s = SSL_new(ctx);
  SSL_set_fd(s, fd);
  if (SSL_connect(s) != 1) die("TLS connect");
  int in = open(argv[4], O_RDONLY);
  if (in < 0) die("source");
  unsigned char *buf = malloc(WINDOW), hdr[HEADER], blocks[SHA256_DIGEST_LENGTH * (WINDOW / BLOCK)];
  long long off = 0;
  double t0 = now();
  ssize_t n;
  while ((n = pread(in, buf, WINDOW, off)) > 0) {
    if (passes >= 2 || tree) block_digests(buf, (size_t)n, blocks);
    uint64_t len = (uint64_t)n;
    memcpy(hdr, &len, 8);
    if (tree) tree_digest((size_t)n, blocks, hdr + 8); else sha256(buf, (size_t)n, hdr + 8);
    if (SSL_write(s, hdr, HEADER) != HEADER || SSL_write(s, buf, (int)n) != (int)n) die("send");
    off += n;
  }
  /* Wait for the receiver to close: exiting with unread bytes (its session tickets) in our receive
     queue would reset the connection and drop what it has not read yet. */
  SSL_shutdown(s);
  shutdown(fd, SHUT_WR);
  char drain[4096];
  while (read(fd, drain, sizeof drain) > 0) {}
  report("send", t0, off, s);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc > 1 && !strcmp(argv[1], "receive")) return receive(argc, argv);
  if (argc > 1 && !strcmp(argv[1], "send")) return send_source(argc, argv);
  die("usage: data-plane-floor send|receive ...");
  return 1;
}
