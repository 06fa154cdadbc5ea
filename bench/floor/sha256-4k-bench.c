/*
 * SHA-256 of 4 KiB blocks on one core: OpenSSL's EVP one block after the other (vmlift's digester
 * before issue 16 item 2) vs native/digest/sha256-4k.c with 1 to 4 interleaved blocks. Thread CPU
 * time, so the figures hold on a loaded machine; the variants alternate over the rounds. Every
 * variant's digests are checked against OpenSSL's first (exit 1 on a mismatch).
 *
 *   cc -std=c11 -O2 -Inative/digest -o bench/floor/build/sha256-4k-bench bench/floor/sha256-4k-bench.c \
 *      native/digest/sha256-4k.c -lcrypto && bench/floor/build/sha256-4k-bench [MiB per run] [rounds]
 */
#define _GNU_SOURCE
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "sha256-4k.h"

#define BLOCKS 1024 /* 4 MiB of data: the hashed buffer stays in L2/L3 as a window would */

static EVP_MD *md256;
static EVP_MD_CTX *ctx;

static void openssl_many(const uint8_t *const *m, uint8_t *const *d, size_t n) {
  unsigned l;
  for (size_t i = 0; i < n; i++) {
    EVP_DigestInit_ex2(ctx, md256, NULL);
    EVP_DigestUpdate(ctx, m[i], SHA256_4K_MSG);
    EVP_DigestFinal_ex(ctx, d[i], &l);
  }
}

static double cpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  int mib = argc > 1 ? atoi(argv[1]) : 256, rounds = argc > 2 ? atoi(argv[2]) : 3;
  if (!(sha256_4k_supported() & SHA256_4K_NI)) { fprintf(stderr, "no SHA extensions on this CPU\n"); return 2; }
  md256 = EVP_MD_fetch(NULL, "SHA256", NULL);
  ctx = EVP_MD_CTX_new();
  uint8_t *data = malloc((size_t)BLOCKS * SHA256_4K_MSG), *want = malloc(BLOCKS * 32), *got = malloc(BLOCKS * 32);
  const uint8_t *msg[BLOCKS];
  uint8_t *wmd[BLOCKS], *gmd[BLOCKS];
  srand(42);
  for (size_t i = 0; i < (size_t)BLOCKS * SHA256_4K_MSG; i++) data[i] = (uint8_t)rand();
  for (int i = 0; i < BLOCKS; i++) { msg[i] = data + (size_t)i * SHA256_4K_MSG; wmd[i] = want + i * 32; gmd[i] = got + i * 32; }
  openssl_many(msg, wmd, BLOCKS);
  for (int lanes = 1; lanes <= 4; lanes++) {
    for (size_t n = 0; n <= 9; n++) { /* every remainder of n / lanes */
      memset(got, 0, BLOCKS * 32);
      sha256_4k_many(msg, gmd, n, lanes);
      if (memcmp(got, want, n * 32)) { fprintf(stderr, "x%d: digest mismatch (n %zu)\n", lanes, n); return 1; }
    }
    sha256_4k_many(msg, gmd, BLOCKS, lanes);
    if (memcmp(got, want, BLOCKS * 32)) { fprintf(stderr, "x%d: digest mismatch\n", lanes); return 1; }
  }
  memset(got, 0, BLOCKS * 32);
  int have16 = sha256_4k_x16(msg, gmd);
  for (int i = 16; have16 && i < BLOCKS; i += 16) sha256_4k_x16(msg + i, gmd + i);
  if (have16 && memcmp(got, want, BLOCKS * 32)) { fprintf(stderr, "avx512 x16: digest mismatch\n"); return 1; }
  const char *names[6] = { "openssl-evp serial", "sha-ni x1", "sha-ni x2", "sha-ni x3", "sha-ni x4", "avx512 x16" };
  double cpu[6] = { 0 };
  int reps = mib / 4 > 0 ? mib / 4 : 1;
  for (int r = 0; r < rounds; r++) {
    for (int v = 0; v < 5 + have16; v++) {
      double t0 = cpu_now();
      for (int k = 0; k < reps; k++) {
        if (v == 0) openssl_many(msg, gmd, BLOCKS);
        else if (v == 5) for (int i = 0; i < BLOCKS; i += 16) sha256_4k_x16(msg + i, gmd + i);
        else sha256_4k_many(msg, gmd, BLOCKS, v);
      }
      cpu[v] += cpu_now() - t0;
    }
  }
  double bytes = (double)rounds * reps * BLOCKS * SHA256_4K_MSG;
  for (int v = 0; v < 5 + have16; v++) printf("%-20s %6.0f MB/s per core (%.3f CPU s per GiB)\n", names[v], bytes / 1e6 / cpu[v], cpu[v] / (bytes / (1 << 30)));
  double probe[2];
  int use = sha256_4k_fastest(probe);
  printf("vmlift's load-time probe (64 blocks): sha-ni x2 %.0f, avx512 x16 %.0f MB/s: it takes %s\n", probe[0], probe[1],
         use & SHA256_4K_AVX512 ? "avx512 x16" : use & SHA256_4K_NI ? "sha-ni x2" : "openssl");
  return 0;
}
