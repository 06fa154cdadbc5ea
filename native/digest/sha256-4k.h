/*
 * SHA-256 of whole 4096-byte messages (the tree digest's leaves) with the x86 SHA extensions,
 * several independent messages interleaved so the CPU's SHA unit always has work (one message alone
 * waits on each sha256rnds2's result). See sha256-4k.c.
 */
#ifndef VMLIFT_SHA256_4K_H
#define VMLIFT_SHA256_4K_H
#include <stddef.h>
#include <stdint.h>

#define SHA256_4K_MSG 4096

/* 1 when this CPU has the SHA extensions and SSE4.1 (CPUID), so the functions below may run. */
int sha256_4k_supported(void);

/* md[i] (32 bytes) = SHA-256 of the 4096 bytes at msg[i], for i < n, `lanes` messages at a time
   (1, 2, 3 or 4; any n). Only after sha256_4k_supported() said 1. */
void sha256_4k_many(const uint8_t *const *msg, uint8_t *const *md, size_t n, int lanes);

#endif
