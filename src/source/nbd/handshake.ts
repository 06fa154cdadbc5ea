/**
 * The NBD handshake (fixed newstyle negotiation, NetworkBlockDevice/nbd doc/proto.md), up to the
 * transmission phase: the greeting, NBD_OPT_STARTTLS (then TLS on the same socket),
 * NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT for base:allocation, and NBD_OPT_GO with its
 * NBD_REP_INFO replies (export size, transmission flags, block sizes), or NBD_OPT_EXPORT_NAME on
 * servers older than NBD_OPT_GO.
 */
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { NbdError } from './errors.ts';
import { HandshakeReader } from './handshake-reader.ts';
import * as P from './protocol.ts';
import type { NbdTarget } from './uri.ts';

export interface NbdTlsSettings {
  /** PEM CA certificate(s) the server certificate must chain to (pinned CA). */
  ca?: string | Buffer;
  /** Pinned SHA-256 fingerprint of the server certificate ("AB:CD:..." or hex); replaces CA checks. */
  fingerprint256?: string;
  /** Client certificate and key for servers that verify peers (nbdkit --tls-verify-peer). */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Name the certificate must be issued for (default: the URI host, or "localhost" for Unix sockets). */
  servername?: string;
}

export interface NbdHandshakeSettings {
  tls?: NbdTlsSettings;
  /** Negotiate structured replies (default true) and base:allocation (default true). */
  structuredReplies?: boolean;
  allocationContext?: boolean;
}

export interface NbdExportInfo {
  size: number;
  transmissionFlags: number;
  minBlock: number;
  preferredBlock: number;
  maxBlock: number;
  structuredReplies: boolean;
  /** Context id of base:allocation when the server agreed to it. */
  allocationContextId: number | undefined;
}

const DEFAULT_MAX_BLOCK = 32 << 20; // the protocol's assumed maximum when the server does not say

/** The socket the transmission phase runs on (TLS or the plain one), and bytes already received for it. */
export interface Negotiated {
  sock: Duplex;
  info: NbdExportInfo;
  leftover: Buffer;
}

/** Negotiate on a connected socket within `timeoutMs`; on failure the socket (and TLS over it) is destroyed. */
export async function handshake(raw: net.Socket, target: NbdTarget, settings: NbdHandshakeSettings, timeoutMs: number): Promise<Negotiated> {
  const reader = new HandshakeReader();
  reader.attach(raw);
  let sock: Duplex = raw;
  const timer = setTimeout(() => raw.destroy(new Error(`negotiation timed out after ${timeoutMs} ms`)), timeoutMs);
  try {
    const info = await negotiate(raw, reader, target, settings, (s) => { sock = s; });
    const leftover = reader.detach();
    clearTimeout(timer);
    return { sock, info, leftover };
  } catch (e) {
    clearTimeout(timer);
    reader.detach();
    sock.destroy();
    raw.destroy();
    throw e;
  }
}

async function negotiate(raw: net.Socket, reader: HandshakeReader, target: NbdTarget, settings: NbdHandshakeSettings,
  setSock: (s: Duplex) => void): Promise<NbdExportInfo> {
  let sock: Duplex = raw;
  const fail = (m: string, transient = false): never => { throw new NbdError(`NBD negotiation with ${target.display}: ${m}`, { transient }); };
  const greet = await reader.read(18).catch((e: Error) => fail(e.message, true));
  if (greet.readBigUInt64BE(0) !== P.NBDMAGIC) fail('not an NBD server (no NBDMAGIC greeting)');
  if (greet.readBigUInt64BE(8) !== P.IHAVEOPT) fail('the server speaks the old-style handshake, which vmlift does not support');
  const hflags = greet.readUInt16BE(16);
  if (!(hflags & P.FLAG_FIXED_NEWSTYLE)) fail('the server does not support the fixed newstyle handshake');
  const noZeroes = (hflags & P.FLAG_NO_ZEROES) !== 0;
  const cf = Buffer.alloc(4);
  cf.writeUInt32BE(P.FLAG_C_FIXED_NEWSTYLE | (noZeroes ? P.FLAG_C_NO_ZEROES : 0));
  sock.write(cf);

  const sendOpt = (opt: number, data: Buffer = Buffer.alloc(0)): void => {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(P.IHAVEOPT, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    sock.write(Buffer.concat([h, data]));
  };
  const readReply = async (opt: number): Promise<{ type: number; data: Buffer }> => {
    const h = await reader.read(20).catch((e: Error) => fail(e.message, true));
    if (h.readBigUInt64BE(0) !== P.OPTION_REPLY_MAGIC) fail('bad option reply magic');
    if (h.readUInt32BE(8) !== opt) fail(`reply to option ${h.readUInt32BE(8)} while waiting for option ${opt}`);
    const type = h.readUInt32BE(12);
    const len = h.readUInt32BE(16);
    if (len > 1 << 20) fail(`option reply of ${len} bytes`);
    const data = len ? await reader.read(len).catch((e: Error) => fail(e.message, true)) : Buffer.alloc(0);
    return { type, data };
  };
  const errText = (r: { type: number; data: Buffer }): string =>
    (P.REP_ERRORS[r.type] ?? `error reply 0x${r.type.toString(16)}`) + (r.data.length ? `: ${r.data.toString('utf8')}` : '');

  if (target.tls) {
    sendOpt(P.OPT_STARTTLS);
    const r = await readReply(P.OPT_STARTTLS);
    if (r.type !== P.REP_ACK) fail(`the server refused TLS (${errText(r)}); use nbd:// if it does not offer TLS`);
    const rest = reader.detach();
    if (rest.length) fail('unexpected bytes after the STARTTLS reply');
    sock = await startTls(raw, target, settings.tls ?? {});
    setSock(sock);
    reader.attach(sock);
  }

  const nameBuf = Buffer.from(target.exportName, 'utf8');
  let structured = false;
  if (settings.structuredReplies !== false) {
    sendOpt(P.OPT_STRUCTURED_REPLY);
    const r = await readReply(P.OPT_STRUCTURED_REPLY);
    if (r.type === P.REP_ERR_TLS_REQD) fail('the server requires TLS: use an nbds:// URI');
    structured = r.type === P.REP_ACK;
  }

  let allocationContextId: number | undefined;
  if (structured && settings.allocationContext !== false) {
    const q = Buffer.from('base:allocation');
    const d = Buffer.alloc(4 + nameBuf.length + 4 + 4 + q.length);
    let o = d.writeUInt32BE(nameBuf.length, 0);
    o += nameBuf.copy(d, o);
    o = d.writeUInt32BE(1, o);
    o = d.writeUInt32BE(q.length, o);
    q.copy(d, o);
    sendOpt(P.OPT_SET_META_CONTEXT, d);
    for (;;) {
      const r = await readReply(P.OPT_SET_META_CONTEXT);
      if (r.type === P.REP_META_CONTEXT && r.data.length >= 4) {
        if (r.data.toString('utf8', 4) === 'base:allocation') allocationContextId = r.data.readUInt32BE(0);
        continue;
      }
      if (r.type === P.REP_ERR_UNKNOWN) fail(`export "${target.exportName}" not found on the server`);
      break; // ACK, or an error: carry on without extents
    }
  }

  // NBD_OPT_GO: export name, then the information we ask for (block sizes).
  const go = Buffer.alloc(4 + nameBuf.length + 2 + 2);
  let o = go.writeUInt32BE(nameBuf.length, 0);
  o += nameBuf.copy(go, o);
  o = go.writeUInt16BE(1, o);
  go.writeUInt16BE(P.INFO_BLOCK_SIZE, o);
  sendOpt(P.OPT_GO, go);
  let size: number | undefined;
  let tflags = 0;
  let minBlock = 1;
  let preferredBlock = 4096;
  let maxBlock = DEFAULT_MAX_BLOCK;
  for (;;) {
    const r = await readReply(P.OPT_GO);
    if (r.type === P.REP_INFO) {
      if (r.data.length < 2) fail('short NBD_REP_INFO');
      const it = r.data.readUInt16BE(0);
      if (it === P.INFO_EXPORT && r.data.length >= 12) {
        size = Number(r.data.readBigUInt64BE(2));
        tflags = r.data.readUInt16BE(10);
      } else if (it === P.INFO_BLOCK_SIZE && r.data.length >= 14) {
        minBlock = r.data.readUInt32BE(2) || 1;
        preferredBlock = r.data.readUInt32BE(6) || 4096;
        maxBlock = r.data.readUInt32BE(10) || DEFAULT_MAX_BLOCK;
      }
      continue;
    }
    if (r.type === P.REP_ACK) break;
    if (r.type === P.REP_ERR_UNKNOWN) fail(`export "${target.exportName}" not found on the server`);
    if (r.type === P.REP_ERR_TLS_REQD) fail('the server requires TLS: use an nbds:// URI');
    if (r.type === P.REP_ERR_BIT + 1) {
      // Servers older than NBD_OPT_GO: NBD_OPT_EXPORT_NAME ends negotiation with size and flags.
      sendOpt(P.OPT_EXPORT_NAME, nameBuf);
      const b = await reader.read(noZeroes ? 10 : 134).catch((e: Error) => fail(e.message, true));
      size = Number(b.readBigUInt64BE(0));
      tflags = b.readUInt16BE(8);
      break;
    }
    fail(`the server refused export "${target.exportName}": ${errText(r)}`);
  }
  if (size === undefined) fail('the server did not send the export size');
  // Reads are sized and aligned by these: a hostile minimum would make every read gigabytes.
  const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
  if (!pow2(minBlock) || minBlock > 1 << 16) fail(`minimum block size ${minBlock} is not a power of two up to 64 KiB`);
  if (!pow2(preferredBlock) || preferredBlock < minBlock) fail(`preferred block size ${preferredBlock} is not a power of two at least the minimum ${minBlock}`);
  if (maxBlock < minBlock || (maxBlock % minBlock !== 0 && maxBlock !== 0xffffffff)) fail(`maximum block size ${maxBlock} is not a multiple of the minimum ${minBlock}`);
  if (!Number.isSafeInteger(size)) fail(`export size ${size} is too large`);
  return {
    size: size!, transmissionFlags: tflags, minBlock, preferredBlock, maxBlock,
    structuredReplies: structured, allocationContextId,
  };
}

function startTls(raw: net.Socket, target: NbdTarget, s: NbdTlsSettings): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const host = s.servername ?? target.host ?? 'localhost';
    const pin = s.fingerprint256?.replace(/:/g, '').toUpperCase();
    const t = tls.connect({
      socket: raw,
      host,
      servername: net.isIP(host) ? undefined : host,
      ca: s.ca,
      cert: s.cert,
      key: s.key,
      minVersion: 'TLSv1.2',
      rejectUnauthorized: pin === undefined,
    });
    t.once('secureConnect', () => {
      if (pin !== undefined) {
        const got = t.getPeerCertificate().fingerprint256?.replace(/:/g, '').toUpperCase();
        if (got !== pin) {
          t.destroy();
          reject(new NbdError(`TLS to ${target.display}: server certificate fingerprint ${got ?? '(none)'} does not match the pinned ${s.fingerprint256}`, { transient: false }));
          return;
        }
      }
      resolve(t);
    });
    t.once('error', (e) => reject(new NbdError(`TLS to ${target.display} failed: ${e.message}`, { transient: false, cause: e })));
  });
}
