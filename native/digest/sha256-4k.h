/*
 * SHA-256 of whole 4096-byte messages (the tree digest's leaves), several independent messages at
 * once: interleaved with the x86 SHA extensions so the CPU's SHA unit always has work (one message
 * alone waits on each sha256rnds2's result), or 16 in the lanes of AVX-512. See sha256-4k.c.
 */
#ifndef VMLIFT_SHA256_4K_H
#define VMLIFT_SHA256_4K_H
#include <stddef.h>
#include <stdint.h>

#define SHA256_4K_MSG 4096

#define SHA256_4K_NI 1     /* the SHA extensions, SSSE3 and SSE4.1: sha256_4k_many may run */
#define SHA256_4K_AVX512 2 /* AVX-512 F and BW: sha256_4k_x16 hashes */

/* What this CPU has (CPUID), of the SHA256_4K_ bits. */
int sha256_4k_supported(void);

/* md[i] (32 bytes) = SHA-256 of the 4096 bytes at msg[i], for i < n, `lanes` messages at a time
   (1, 2, 3 or 4; any n), with SHA-NI. Only where sha256_4k_supported() has SHA256_4K_NI. */
void sha256_4k_many(const uint8_t *const *msg, uint8_t *const *md, size_t n, int lanes);

/* The 16 messages at msg[0..15] with AVX-512 (one per lane); 0 when not hashed (no AVX-512, or the
   messages lie more than 2 GiB apart). Needs no SHA extensions; call sha256_4k_supported() first. */
int sha256_4k_x16(const uint8_t *const *msg, uint8_t *const *md);

/* The SHA256_4K_ bits worth using here: when the CPU has both, only the one that hashed a probe of
   64 messages faster (timed once per process; AVX-512 keeps SHA-NI for a batch's remainder). When
   `mbps` is not NULL: the probe's MB/s per core, [0] SHA-NI x2 and [1] AVX-512 x16 (0: not timed). */
int sha256_4k_fastest(double *mbps);

#endif
