import type tls from 'node:tls';

/**
 * The cipher suites of every vmlift TLS link: the receiver's control and data ports, the agent hub,
 * the connector's remote API and console, and the senders' pinned connections. Only AEAD suites
 * with forward secrecy: TLS 1.3's three, and on TLS 1.2 ECDHE with AES-GCM or ChaCha20-Poly1305.
 * Node's default set also takes TLS 1.2 CBC suites (its `HIGH`), which no vmlift peer and no
 * current browser needs. AES-128-GCM comes first: TLS 1.3's mandatory suite, and less CPU per byte
 * than AES-256-GCM (docs/transfer.md, "session 10: TLS"), which both sides still accept.
 */
export const VMLIFT_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

/** A vmlift TLS server: its own order decides, so a client's preference cannot pull it to a costlier suite. */
export const SERVER_TLS = { minVersion: 'TLSv1.2', ciphers: VMLIFT_CIPHERS, honorCipherOrder: true } as const satisfies tls.TlsOptions;

/** A vmlift TLS client. */
export const CLIENT_TLS = { minVersion: 'TLSv1.2', ciphers: VMLIFT_CIPHERS } as const satisfies tls.ConnectionOptions;
