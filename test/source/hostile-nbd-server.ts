/**
 * A hostile NBD server for nbd-hostile.test.ts, run as a child process so that its own buffers do
 * not count in the client's allocations. It negotiates fixed newstyle with structured replies and
 * base:allocation (context id 1), then misbehaves as the export name says. Prints its port.
 * Byte at offset o is (o * 7 + 3) & 255; the export is 1 MiB.
 */
import net from 'node:net';

const SIZE = 1 << 20;
const CTX = 1;
const data = (off: number, len: number): Buffer => {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = ((off + i) * 7 + 3) & 255;
  return b;
};
const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32BE(n >>> 0); return b; };
const u64 = (n: number) => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b; };

/** A structured chunk header for `handle` claiming `len` payload bytes. */
function chunkHead(flags: number, type: number, handle: Buffer, len: number): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt32BE(0x668e33ef, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  handle.copy(h, 8);
  h.writeUInt32BE(len >>> 0, 16);
  return h;
}
const chunk = (flags: number, type: number, handle: Buffer, payload: Buffer) => Buffer.concat([chunkHead(flags, type, handle, payload.length), payload]);
const dataChunk = (flags: number, handle: Buffer, off: number, len: number) => chunk(flags, 1, handle, Buffer.concat([u64(off), data(off, len)]));
const statusChunk = (flags: number, handle: Buffer, ctx: number, extents: Array<[number, number]>) =>
  chunk(flags, 5, handle, Buffer.concat([u32(ctx), ...extents.flatMap(([l, f]) => [u32(l), u32(f)])]));
const errorChunk = (flags: number, handle: Buffer, code: number, msg: string) => {
  const m = Buffer.from(msg);
  const p = Buffer.alloc(6);
  p.writeUInt32BE(code, 0);
  p.writeUInt16BE(m.length, 4);
  return chunk(flags, 32769, handle, Buffer.concat([p, m]));
};

interface Req { type: number; handle: Buffer; off: number; len: number }
type Behaviour = (sock: net.Socket, r: Req, n: number) => void;
const DONE = 1;
const stale = new WeakMap<net.Socket, Buffer>();

const behaviours: Record<string, Behaviour> = {
  good: (s, r) => s.write(r.type === 0 ? dataChunk(DONE, r.handle, r.off, r.len) : statusChunk(DONE, r.handle, CTX, [[r.len, 0]])),
  'bad-magic': (s, r) => { const c = dataChunk(DONE, r.handle, r.off, r.len); c.writeUInt32BE(0x12345678, 0); s.write(c); },
  'wrong-handle': (s, r) => { const h = Buffer.from(r.handle); h.writeUInt32BE(0xdead, 0); s.write(dataChunk(DONE, h, r.off, r.len)); },
  // answers the second request with the handle of the first, which is no longer waiting
  'stale-handle': (s, r, n) => {
    if (n === 1) stale.set(s, r.handle);
    s.write(dataChunk(DONE, n === 1 ? r.handle : stale.get(s)!, r.off, r.len));
  },
  'short-simple': (s, r) => {
    const h = Buffer.alloc(16);
    h.writeUInt32BE(0x67446698, 0);
    r.handle.copy(h, 8);
    s.end(Buffer.concat([h, data(r.off, r.len >> 1)]));
  },
  'short-structured': (s, r) => { const c = dataChunk(DONE, r.handle, r.off, r.len); s.end(c.subarray(0, c.length - 100)); },
  // a data chunk claiming 4 GiB: the client must refuse it from the header, not buffer it
  'huge-data-chunk': (s, r) => { s.write(Buffer.concat([chunkHead(DONE, 1, r.handle, 0xffffffff), u64(r.off), data(r.off, 65536)])); },
  'huge-status-chunk': (s, r) => { s.write(Buffer.concat([chunkHead(DONE, 5, r.handle, 0xfffffff4), u32(CTX), data(0, 65536)])); },
  // 1 Mi extents for a 256 KiB request: under the 16 MiB cap, over what the request can hold
  'big-status-chunk': (s, r) => { s.write(Buffer.concat([chunkHead(DONE, 5, r.handle, 4 + 8 * (1 << 20)), u32(CTX), data(0, 65536)])); },
  'huge-error-chunk': (s, r) => { s.write(Buffer.concat([chunkHead(DONE, 32769, r.handle, 0x7fffffff), u32(5), data(0, 65536)])); },
  overlap: (s, r) => s.write(Buffer.concat([dataChunk(0, r.handle, r.off, r.len), dataChunk(DONE, r.handle, r.off, r.len)])),
  // holes over the same bytes without end and never DONE: the client must not collect them forever
  'endless-holes': (s, r) => {
    const hole = chunk(0, 2, r.handle, Buffer.concat([u64(r.off), u32(r.len)]));
    const t = setInterval(() => { if (s.destroyed) clearInterval(t); else s.write(Buffer.concat(Array(256).fill(hole))); }, 1);
  },
  // the right reply, one byte every 20 ms: never silent, never done
  trickle: (s, r) => {
    const c = dataChunk(DONE, r.handle, r.off, r.len);
    let i = 0;
    const t = setInterval(() => { if (s.destroyed || i >= c.length) clearInterval(t); else s.write(c.subarray(i, ++i)); }, 20);
  },
  'endless-errors': (s, r) => {
    const e = errorChunk(0, r.handle, 5, 'again');
    const t = setInterval(() => { if (s.destroyed) clearInterval(t); else s.write(e); }, 1);
  },
  'status-past-end': (s, r) => s.write(statusChunk(DONE, r.handle, CTX, [[r.len, 0], [SIZE, 0]])),
  'status-zero': (s, r) => s.write(statusChunk(DONE, r.handle, CTX, [[4096, 0], [0, 3], [r.len - 4096, 0]])),
  'status-twice': (s, r) => s.write(Buffer.concat([statusChunk(0, r.handle, CTX, [[r.len, 3]]), statusChunk(DONE, r.handle, CTX, [[r.len, 0]])])),
  'status-other-ctx': (s, r) => s.write(statusChunk(DONE, r.handle, 99, [[r.len, 0]])),
  // extents shorter than the 4 KiB minimum block: a scan from an unaligned offset cannot advance
  'status-short-extent': (s, r) => s.write(statusChunk(DONE, r.handle, CTX, [[50, 0]])),
  'status-beyond-request': (s, r) => s.write(statusChunk(DONE, r.handle, CTX, [[Math.min(SIZE - r.off, r.len + 65536), 0]])),
};

const server = net.createServer((sock) => {
  sock.on('error', () => undefined);
  let buf = Buffer.alloc(0);
  let phase: 'flags' | 'opts' | 'tx' = 'flags';
  let name = 'good';
  let n = 0;
  const head = Buffer.alloc(18);
  head.write('NBDMAGIC', 0);
  head.write('IHAVEOPT', 8);
  head.writeUInt16BE(3, 16);
  sock.write(head);
  const optReply = (opt: number, type: number, payload = Buffer.alloc(0), claim = payload.length): void => {
    const h = Buffer.alloc(20);
    h.writeBigUInt64BE(0x3e889045565a9n, 0);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(type >>> 0, 12);
    h.writeUInt32BE(claim >>> 0, 16);
    sock.write(Buffer.concat([h, payload]));
  };
  const exportName = (d: Buffer): string => d.toString('utf8', 4, 4 + d.readUInt32BE(0));
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    for (;;) {
      if (phase === 'flags') {
        if (buf.length < 4) return;
        buf = buf.subarray(4);
        phase = 'opts';
      } else if (phase === 'opts') {
        if (buf.length < 16) return;
        const opt = buf.readUInt32BE(8);
        const len = buf.readUInt32BE(12);
        if (buf.length < 16 + len) return;
        const od = buf.subarray(16, 16 + len);
        buf = buf.subarray(16 + len);
        if (opt === 8) optReply(opt, 1);
        else if (opt === 10) {
          name = exportName(od);
          if (name === 'huge-option-reply') { optReply(opt, 4, Buffer.alloc(65536), 0xfffffff0); continue; }
          optReply(opt, 4, Buffer.concat([u32(CTX), Buffer.from('base:allocation')]));
          optReply(opt, 1);
        } else if (opt === 7) {
          name = exportName(od);
          const info = Buffer.alloc(12);
          info.writeBigUInt64BE(BigInt(SIZE), 2);
          info.writeUInt16BE(1 | 2, 10);
          optReply(opt, 3, info);
          const bs = Buffer.alloc(14);
          bs.writeUInt16BE(3, 0);
          const min = name === 'huge-min-block' ? 0x80000000 : name === 'status-short-extent' ? 4096 : 1;
          bs.writeUInt32BE(min, 2);
          bs.writeUInt32BE(Math.max(min, 4096), 6);
          bs.writeUInt32BE(name === 'huge-min-block' ? 0x80000000 : 32 << 20, 10);
          optReply(opt, 3, bs);
          optReply(opt, 1);
          phase = 'tx';
        } else optReply(opt, 0x80000001);
      } else {
        if (buf.length < 28) return;
        const r: Req = { type: buf.readUInt16BE(6), handle: Buffer.from(buf.subarray(8, 16)), off: Number(buf.readBigUInt64BE(16)), len: buf.readUInt32BE(24) };
        buf = buf.subarray(28);
        if (r.type === 2) { sock.end(); return; }
        (behaviours[name] ?? behaviours.good!)(sock, r, ++n);
      }
    }
  });
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`${(server.address() as net.AddressInfo).port}\n`));
process.on('disconnect', () => process.exit(0));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
