import tls from 'node:tls';

/**
 * The cipher suites of every vmlift TLS link (receiver control and data ports, and the senders'
 * pinned connections): Node's default set, in an order that puts AES-128-GCM first. The set is
 * the one Node accepts by default, so no peer that connected before is refused and nothing
 * weaker is let in; only the preference changes. AES-128-GCM is TLS 1.3's mandatory suite and
 * costs less CPU per byte than AES-256-GCM (docs/transfer.md, "session 10: TLS"), which both
 * sides still accept.
 */
const PREFERRED = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
];

export const VMLIFT_CIPHERS = [...PREFERRED, ...tls.DEFAULT_CIPHERS.split(':').filter((c) => !PREFERRED.includes(c))].join(':');

/** A vmlift TLS server: its own order decides, so a client's preference cannot pull it to a costlier suite. */
export const SERVER_TLS = { minVersion: 'TLSv1.2', ciphers: VMLIFT_CIPHERS, honorCipherOrder: true } as const satisfies tls.TlsOptions;

/** A vmlift TLS client. */
export const CLIENT_TLS = { minVersion: 'TLSv1.2', ciphers: VMLIFT_CIPHERS } as const satisfies tls.ConnectionOptions;
