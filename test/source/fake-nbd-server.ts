import net from 'node:net';

/**
 * A tiny NBD server that negotiates correctly (fixed newstyle, structured replies, NBD_OPT_GO)
 * and then misbehaves on READ the way `mode` says. Byte at offset o is (o * 7 + 3) & 255.
 */
export type Misbehaviour = 'good' | 'short' | 'wrong-handle' | 'close-mid-reply' | 'error-chunk' | 'outside' | 'bad-magic' | 'simple-short';

export const fakeByte = (o: number): number => (o * 7 + 3) & 255;
export function fakeData(off: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = fakeByte(off + i);
  return b;
}

export async function startFakeServer(size: number, mode: Misbehaviour): Promise<{ port: number; close: () => Promise<void>; connections: () => number }> {
  let connections = 0;
  const socks = new Set<net.Socket>();
  const server = net.createServer((sock) => {
    connections++;
    socks.add(sock);
    sock.on('close', () => socks.delete(sock));
    sock.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    let phase: 'flags' | 'opts' | 'tx' = 'flags';
    const head = Buffer.alloc(18);
    head.write('NBDMAGIC', 0);
    head.write('IHAVEOPT', 8);
    head.writeUInt16BE(3, 16); // FIXED_NEWSTYLE | NO_ZEROES
    sock.write(head);
    const optReply = (opt: number, type: number, data = Buffer.alloc(0)): void => {
      const h = Buffer.alloc(20);
      h.writeBigUInt64BE(0x3e889045565a9n, 0);
      h.writeUInt32BE(opt, 8);
      h.writeUInt32BE(type, 12);
      h.writeUInt32BE(data.length, 16);
      sock.write(Buffer.concat([h, data]));
    };
    const chunk = (flags: number, type: number, handle: Buffer, payload: Buffer): Buffer => {
      const h = Buffer.alloc(20);
      h.writeUInt32BE(0x668e33ef, 0);
      h.writeUInt16BE(flags, 4);
      h.writeUInt16BE(type, 6);
      handle.copy(h, 8);
      h.writeUInt32BE(payload.length, 16);
      return Buffer.concat([h, payload]);
    };
    const dataChunk = (flags: number, handle: Buffer, off: number, len: number): Buffer => {
      const p = Buffer.alloc(8);
      p.writeBigUInt64BE(BigInt(off));
      return chunk(flags, 1, handle, Buffer.concat([p, fakeData(off, len)]));
    };
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
          buf = buf.subarray(16 + len);
          if (opt === 8) optReply(opt, 1);
          else if (opt === 7) {
            const info = Buffer.alloc(12);
            info.writeUInt16BE(0, 0);
            info.writeBigUInt64BE(BigInt(size), 2);
            info.writeUInt16BE(1 | 2, 10);
            optReply(opt, 3, info);
            optReply(opt, 1);
            phase = 'tx';
          } else optReply(opt, 0x80000001);
        } else {
          if (buf.length < 28) return;
          const type = buf.readUInt16BE(6);
          const handle = Buffer.from(buf.subarray(8, 16));
          const off = Number(buf.readBigUInt64BE(16));
          const len = buf.readUInt32BE(24);
          buf = buf.subarray(28);
          if (type === 2) { sock.end(); return; }
          if (type !== 0) continue;
          if (mode === 'good') sock.write(dataChunk(1, handle, off, len));
          else if (mode === 'short') sock.write(dataChunk(1, handle, off, len - 1));
          else if (mode === 'wrong-handle') { handle.writeUInt32BE(handle.readUInt32BE(4) + 1000, 4); sock.write(dataChunk(1, handle, off, len)); }
          else if (mode === 'close-mid-reply') { const c = dataChunk(1, handle, off, len); sock.end(c.subarray(0, 20 + 8 + (len >> 1))); }
          else if (mode === 'error-chunk') {
            const msg = Buffer.from('disk is on fire');
            const p = Buffer.alloc(6);
            p.writeUInt32BE(22, 0); // EINVAL: not worth retrying
            p.writeUInt16BE(msg.length, 4);
            sock.write(chunk(1, 32769, handle, Buffer.concat([p, msg])));
          } else if (mode === 'outside') sock.write(dataChunk(1, handle, off + len, len));
          else if (mode === 'bad-magic') { const c = dataChunk(1, handle, off, len); c.writeUInt32BE(0xdeadbeef, 0); sock.write(c); }
          else if (mode === 'simple-short') {
            const h = Buffer.alloc(16);
            h.writeUInt32BE(0x67446698, 0);
            handle.copy(h, 8);
            sock.end(Buffer.concat([h, fakeData(off, len - 10)]));
          }
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  return {
    port,
    connections: () => connections,
    close: () => new Promise<void>((r) => { for (const s of socks) s.destroy(); server.close(() => r()); }),
  };
}
