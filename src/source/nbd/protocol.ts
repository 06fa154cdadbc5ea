/**
 * NBD protocol constants (NetworkBlockDevice/nbd doc/proto.md: fixed newstyle negotiation,
 * structured replies, block status). Every integer on the wire is big-endian.
 */

export const NBDMAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server) and client flags.
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

// Options.
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_SET_META_CONTEXT = 10;

// Option reply types; errors have bit 31 set.
export const REP_ACK = 1;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
export const REP_ERR_BIT = 0x80000000;
export const REP_ERRORS: Record<number, string> = {
  [REP_ERR_BIT + 1]: 'option not supported by the server (NBD_REP_ERR_UNSUP)',
  [REP_ERR_BIT + 2]: 'forbidden by server policy (NBD_REP_ERR_POLICY)',
  [REP_ERR_BIT + 3]: 'invalid option (NBD_REP_ERR_INVALID)',
  [REP_ERR_BIT + 4]: 'not supported on this platform (NBD_REP_ERR_PLATFORM)',
  [REP_ERR_BIT + 5]: 'the server requires TLS (NBD_REP_ERR_TLS_REQD)',
  [REP_ERR_BIT + 6]: 'export not found (NBD_REP_ERR_UNKNOWN)',
  [REP_ERR_BIT + 7]: 'server is shutting down (NBD_REP_ERR_SHUTDOWN)',
  [REP_ERR_BIT + 8]: 'the server requires block-size negotiation (NBD_REP_ERR_BLOCK_SIZE_REQD)',
  [REP_ERR_BIT + 9]: 'request too big (NBD_REP_ERR_TOO_BIG)',
};
export const REP_ERR_TLS_REQD = REP_ERR_BIT + 5;
export const REP_ERR_UNKNOWN = REP_ERR_BIT + 6;

// NBD_OPT_INFO / NBD_OPT_GO information types.
export const INFO_EXPORT = 0;
export const INFO_BLOCK_SIZE = 3;

// Transmission flags.
export const TFLAG_HAS_FLAGS = 1 << 0;
export const TFLAG_READ_ONLY = 1 << 1;
export const TFLAG_SEND_DF = 1 << 7;
export const TFLAG_CAN_MULTI_CONN = 1 << 8;

// Commands.
export const CMD_READ = 0;
export const CMD_DISC = 2;
export const CMD_BLOCK_STATUS = 7;

// Structured reply flags and chunk types.
export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
export const REPLY_TYPE_ERROR = (1 << 15) + 1;
export const REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;
export const REPLY_TYPE_ERROR_BIT = 1 << 15;

// base:allocation extent flags.
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;

/** Error values carried in replies (the protocol fixes them to these Linux errno numbers). */
export const NBD_ERRNO: Record<number, string> = {
  1: 'EPERM (operation not permitted)',
  5: 'EIO (input/output error)',
  12: 'ENOMEM (out of memory)',
  22: 'EINVAL (invalid argument)',
  28: 'ENOSPC (no space left)',
  75: 'EOVERFLOW (value too large)',
  95: 'ENOTSUP (operation not supported)',
  108: 'ESHUTDOWN (server is shutting down)',
};

export function errnoText(code: number): string {
  return NBD_ERRNO[code] ?? `error ${code}`;
}

export const DEFAULT_PORT = 10809;
