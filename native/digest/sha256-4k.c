/*
 * SHA-256 (FIPS 180-4) of 4096-byte messages, several at once: with the x86 SHA extensions (sha256rnds2: two rounds
 * on the state held as {A,B,E,F} and {C,D,G,H}; sha256msg1/sha256msg2: the message schedule's
 * sigma0 and sigma1 halves), LANES independent messages per pass: each round pair of one message
 * depends on the previous pair, so interleaving messages keeps the SHA unit busy instead of
 * waiting out its latency. Or, with AVX-512, 16 messages in the 16 lanes of its registers (below).
 *
 * A 4096-byte message is 64 blocks of data and one padding block (0x80, zeros, the bit length
 * 32768) that is the same for every message, so its schedule (W[t] + K[t]) is computed once.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include "sha256-4k.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const uint32_t K[64] = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};
static const uint32_t H0[8] = {
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

/* W[t] + K[t] of the padding block of a 4096-byte message */
static _Alignas(16) uint32_t pad_wk[64];
static int supported, supported16;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static uint32_t ror(uint32_t x, int n) { return x >> n | x << (32 - n); }

static void init(void) {
  unsigned a, b, c, d;
  uint32_t w[64] = { [0] = 0x80000000u, [15] = SHA256_4K_MSG * 8 };
  for (int t = 16; t < 64; t++) {
    uint32_t s0 = ror(w[t - 15], 7) ^ ror(w[t - 15], 18) ^ (w[t - 15] >> 3);
    uint32_t s1 = ror(w[t - 2], 17) ^ ror(w[t - 2], 19) ^ (w[t - 2] >> 10);
    w[t] = w[t - 16] + s0 + w[t - 7] + s1;
  }
  for (int t = 0; t < 64; t++) pad_wk[t] = w[t] + K[t];
  /* leaf 7 EBX bit 29: SHA; sha256-4k's SHA-NI code also uses SSSE3's pshufb and SSE4.1's blends */
  supported = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_1) && (c & bit_SSSE3)
      && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 29));
  supported16 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

int sha256_4k_supported(void) {
  pthread_once(&init_once, init);
  return (supported ? SHA256_4K_NI : 0) | (supported16 ? SHA256_4K_AVX512 : 0);
}

#define TARGET __attribute__((target("sha,sse4.1,ssse3")))
#define INLINE static inline __attribute__((always_inline)) TARGET

/* Two rounds per call on each lane: the low half of wk is W+K of the first four, then the high half. */
#define ROUNDS4(L, WK) do { \
    for (int l_ = 0; l_ < (L); l_++) { \
      __m128i k_ = (WK)[l_]; \
      cdgh[l_] = _mm_sha256rnds2_epu32(cdgh[l_], abef[l_], k_); \
      abef[l_] = _mm_sha256rnds2_epu32(abef[l_], cdgh[l_], _mm_shuffle_epi32(k_, 0x0e)); \
    } \
  } while (0)

/* One 64-byte block of each lane's message at p[l] into the lane's state. */
INLINE void compress(int lanes, __m128i *abef, __m128i *cdgh, const uint8_t *const *p) {
  const __m128i be = _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
  __m128i m[4][4], wk[4], abef0[4], cdgh0[4];
  for (int l = 0; l < lanes; l++) { abef0[l] = abef[l]; cdgh0[l] = cdgh[l]; }
#pragma GCC unroll 16
  for (int j = 0; j < 16; j++) {
    __m128i k = _mm_load_si128((const __m128i *)&K[4 * j]);
    for (int l = 0; l < lanes; l++) {
      __m128i *w = m[l];
      if (j < 4) {
        w[j] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p[l] + 16 * j)), be);
      } else {
        /* W[t..t+3] from W[t-16..t-1]: msg1 adds sigma0(W[t-15+i]) to W[t-16+i], then W[t-7+i]
           (bytes 4.. of the pair W[t-8..t-1]), then msg2 adds sigma1 of W[t-2+i] (its own results for i >= 2) */
        __m128i s = _mm_sha256msg1_epu32(w[j & 3], w[(j + 1) & 3]);
        s = _mm_add_epi32(s, _mm_alignr_epi8(w[(j + 3) & 3], w[(j + 2) & 3], 4));
        w[j & 3] = _mm_sha256msg2_epu32(s, w[(j + 3) & 3]);
      }
      wk[l] = _mm_add_epi32(w[j & 3], k);
    }
    ROUNDS4(lanes, wk);
  }
  for (int l = 0; l < lanes; l++) { abef[l] = _mm_add_epi32(abef[l], abef0[l]); cdgh[l] = _mm_add_epi32(cdgh[l], cdgh0[l]); }
}

INLINE void pad_block(int lanes, __m128i *abef, __m128i *cdgh) {
  __m128i abef0[4], cdgh0[4], wk[4];
  for (int l = 0; l < lanes; l++) { abef0[l] = abef[l]; cdgh0[l] = cdgh[l]; }
#pragma GCC unroll 16
  for (int j = 0; j < 16; j++) {
    __m128i k = _mm_load_si128((const __m128i *)&pad_wk[4 * j]);
    for (int l = 0; l < lanes; l++) wk[l] = k;
    ROUNDS4(lanes, wk);
  }
  for (int l = 0; l < lanes; l++) { abef[l] = _mm_add_epi32(abef[l], abef0[l]); cdgh[l] = _mm_add_epi32(cdgh[l], cdgh0[l]); }
}

INLINE void hash_lanes(int lanes, const uint8_t *const *msg, uint8_t *const *md) {
  __m128i abef[4], cdgh[4];
  const uint8_t *p[4];
  for (int l = 0; l < lanes; l++) {
    /* element 3 is A: {A,B,E,F} and {C,D,G,H} from the high element down */
    abef[l] = _mm_set_epi32((int)H0[0], (int)H0[1], (int)H0[4], (int)H0[5]);
    cdgh[l] = _mm_set_epi32((int)H0[2], (int)H0[3], (int)H0[6], (int)H0[7]);
    p[l] = msg[l];
  }
  for (int b = 0; b < SHA256_4K_MSG / 64; b++) {
    compress(lanes, abef, cdgh, p);
    for (int l = 0; l < lanes; l++) p[l] += 64;
  }
  pad_block(lanes, abef, cdgh);
  const __m128i be = _mm_set_epi8(12, 13, 14, 15, 8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3);
  for (int l = 0; l < lanes; l++) {
    __m128i fe_ba = _mm_shuffle_epi32(abef[l], 0x1b); /* elements A,B,E,F from 0 up */
    __m128i hg_dc = _mm_shuffle_epi32(cdgh[l], 0xb1); /* G,H,C,D */
    __m128i abcd = _mm_blend_epi16(fe_ba, hg_dc, 0xf0);
    __m128i efgh = _mm_alignr_epi8(hg_dc, fe_ba, 8);
    _mm_storeu_si128((__m128i *)md[l], _mm_shuffle_epi8(abcd, be));
    _mm_storeu_si128((__m128i *)(md[l] + 16), _mm_shuffle_epi8(efgh, be));
  }
}

/*
 * 16 messages at once, one per 32-bit lane of AVX-512 registers, rounds computed as in FIPS 180-4
 * (no SHA instructions; AVX-512 F and BW). The messages' words are gathered relative to msg[0], so every msg[i] must
 * lie within +-2 GiB of it (sha256_4k_x16 checks).
 */
#define TARGET16 __attribute__((target("avx512f,avx512bw")))
#define ROR(x, n) _mm512_ror_epi32((x), (n))
#define XOR3(x, y, z) _mm512_ternarylogic_epi32((x), (y), (z), 0x96)

TARGET16 static inline __attribute__((always_inline)) void round16(__m512i *s, __m512i wk) {
  __m512i a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], h = s[7];
  __m512i t1 = _mm512_add_epi32(_mm512_add_epi32(h, XOR3(ROR(e, 6), ROR(e, 11), ROR(e, 25))),
                                _mm512_add_epi32(_mm512_ternarylogic_epi32(e, f, g, 0xca), wk));
  __m512i t2 = _mm512_add_epi32(XOR3(ROR(a, 2), ROR(a, 13), ROR(a, 22)), _mm512_ternarylogic_epi32(a, b, c, 0xe8));
  s[7] = g; s[6] = f; s[5] = e; s[4] = _mm512_add_epi32(d, t1);
  s[3] = c; s[2] = b; s[1] = a; s[0] = _mm512_add_epi32(t1, t2);
}

TARGET16 static void hash16(const uint8_t *base, const int32_t *off, uint8_t *const *md) {
  const __m512i offsets = _mm512_loadu_si512(off);
  const __m512i be = _mm512_set4_epi32(0x0c0d0e0f, 0x08090a0b, 0x04050607, 0x00010203);
  __m512i s[8], w[16];
  for (int i = 0; i < 8; i++) s[i] = _mm512_set1_epi32((int)H0[i]);
  for (int blk = 0; blk < SHA256_4K_MSG / 64; blk++) {
    __m512i s0[8];
    for (int i = 0; i < 8; i++) s0[i] = s[i];
#pragma GCC unroll 64
    for (int t = 0; t < 64; t++) {
      __m512i x;
      if (t < 16) {
        x = _mm512_i32gather_epi32(_mm512_add_epi32(offsets, _mm512_set1_epi32(blk * 64 + 4 * t)), (const void *)base, 1);
        x = _mm512_shuffle_epi8(x, be);
      } else {
        __m512i w15 = w[(t - 15) & 15], w2 = w[(t - 2) & 15];
        __m512i sig0 = XOR3(ROR(w15, 7), ROR(w15, 18), _mm512_srli_epi32(w15, 3));
        __m512i sig1 = XOR3(ROR(w2, 17), ROR(w2, 19), _mm512_srli_epi32(w2, 10));
        x = _mm512_add_epi32(_mm512_add_epi32(w[t & 15], sig0), _mm512_add_epi32(w[(t - 7) & 15], sig1));
      }
      w[t & 15] = x;
      round16(s, _mm512_add_epi32(x, _mm512_set1_epi32((int)K[t])));
    }
    for (int i = 0; i < 8; i++) s[i] = _mm512_add_epi32(s[i], s0[i]);
  }
  __m512i s0[8];
  for (int i = 0; i < 8; i++) s0[i] = s[i];
#pragma GCC unroll 64
  for (int t = 0; t < 64; t++) round16(s, _mm512_set1_epi32((int)pad_wk[t]));
  uint32_t out[8][16];
  for (int i = 0; i < 8; i++) _mm512_storeu_si512(out[i], _mm512_shuffle_epi8(_mm512_add_epi32(s[i], s0[i]), be));
  for (int l = 0; l < 16; l++)
    for (int i = 0; i < 8; i++) memcpy(md[l] + 4 * i, &out[i][l], 4);
}

/* 16 messages with AVX-512 when the CPU has it and they lie close enough together; returns 0 if not hashed. */
int sha256_4k_x16(const uint8_t *const *msg, uint8_t *const *md) {
  if (!supported16) return 0;
  int32_t off[16];
  for (int l = 0; l < 16; l++) {
    ptrdiff_t d = msg[l] - msg[0];
    if (d > INT32_MAX - SHA256_4K_MSG || d < INT32_MIN) return 0;
    off[l] = (int32_t)d;
  }
  hash16(msg[0], off, md);
  return 1;
}

TARGET static void hash1(const uint8_t *const *m, uint8_t *const *d) { hash_lanes(1, m, d); }
TARGET static void hash2(const uint8_t *const *m, uint8_t *const *d) { hash_lanes(2, m, d); }
TARGET static void hash3(const uint8_t *const *m, uint8_t *const *d) { hash_lanes(3, m, d); }
TARGET static void hash4(const uint8_t *const *m, uint8_t *const *d) { hash_lanes(4, m, d); }

void sha256_4k_many(const uint8_t *const *msg, uint8_t *const *md, size_t n, int lanes) {
  static void (*const by_lanes[5])(const uint8_t *const *, uint8_t *const *) = { hash1, hash1, hash2, hash3, hash4 };
  if (lanes < 1) lanes = 1;
  if (lanes > 4) lanes = 4;
  for (size_t i = 0; i < n;) {
    size_t k = n - i < (size_t)lanes ? n - i : (size_t)lanes;
    by_lanes[k](msg + i, md + i);
    i += k;
  }
}

/*
 * Which of the two whole-block paths is faster is the CPU's business: on a Xeon with AVX-512 the 16
 * lanes hashed ~1.9x faster than two interleaved SHA-NI streams, on an AMD EPYC two SHA-NI streams
 * ~1.7x faster than the 16 lanes (docs/transfer.md). So when the CPU has both, both hash the same
 * PROBE_BLOCKS messages, alternating, and the one with the lower best thread CPU time is used.
 */
#define PROBE_BLOCKS 64
#define PROBE_ROUNDS 5
static int fastest;
static double probe_mbps[2]; /* [0] SHA-NI x2, [1] AVX-512 x16; 0 when not timed */
static pthread_once_t fastest_once = PTHREAD_ONCE_INIT;

static double thread_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void probe(void) {
  fastest = sha256_4k_supported();
  if (fastest != (SHA256_4K_NI | SHA256_4K_AVX512)) return;
  uint8_t *buf = malloc(PROBE_BLOCKS * (SHA256_4K_MSG + 32));
  if (!buf) return;
  const uint8_t *msg[PROBE_BLOCKS];
  uint8_t *md[PROBE_BLOCKS];
  for (size_t i = 0; i < PROBE_BLOCKS * SHA256_4K_MSG; i++) buf[i] = (uint8_t)(i * 131 + (i >> 12));
  for (int i = 0; i < PROBE_BLOCKS; i++) { msg[i] = buf + (size_t)i * SHA256_4K_MSG; md[i] = buf + PROBE_BLOCKS * SHA256_4K_MSG + (size_t)i * 32; }
  double best[2] = { 1e9, 1e9 };
  for (int r = 0; r < PROBE_ROUNDS; r++) {
    double t0 = thread_seconds();
    sha256_4k_many(msg, md, PROBE_BLOCKS, 2);
    double t1 = thread_seconds();
    for (int i = 0; i < PROBE_BLOCKS; i += 16) if (!sha256_4k_x16(msg + i, md + i)) { free(buf); fastest = SHA256_4K_NI; return; }
    double t2 = thread_seconds();
    if (t1 - t0 < best[0]) best[0] = t1 - t0;
    if (t2 - t1 < best[1]) best[1] = t2 - t1;
  }
  free(buf);
  for (int k = 0; k < 2; k++) probe_mbps[k] = best[k] > 0 ? PROBE_BLOCKS * SHA256_4K_MSG / best[k] / 1e6 : 0;
  if (best[1] >= best[0]) fastest = SHA256_4K_NI;
}

int sha256_4k_fastest(double *mbps) {
  pthread_once(&fastest_once, probe);
  if (mbps) { mbps[0] = probe_mbps[0]; mbps[1] = probe_mbps[1]; }
  return fastest;
}

#else
int sha256_4k_supported(void) { return 0; }
int sha256_4k_fastest(double *mbps) { if (mbps) mbps[0] = mbps[1] = 0; return 0; }
void sha256_4k_many(const uint8_t *const *msg, uint8_t *const *md, size_t n, int lanes) { (void)msg; (void)md; (void)n; (void)lanes; }
int sha256_4k_x16(const uint8_t *const *msg, uint8_t *const *md) { (void)msg; (void)md; return 0; }
#endif
