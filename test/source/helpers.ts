import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BlockSource } from '../../src/source/types.ts';

export function tempDir(prefix = 'vmlift-src-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

export interface Server { proc: ChildProcess; stop: () => Promise<void>; stderr: () => string }

/** Starts a server process and waits until `ready()` holds (socket file present, port open). */
export async function startServer(cmd: string, args: string[], ready: () => Promise<boolean>): Promise<Server> {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${cmd} exited ${proc.exitCode}: ${err}`);
    if (await ready()) break;
    if (Date.now() > deadline) { proc.kill('SIGKILL'); throw new Error(`${cmd} did not start: ${err}`); }
    await sleep(30);
  }
  const stop = async (): Promise<void> => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const gone = new Promise<void>((r) => proc.once('exit', () => r()));
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 3000);
    await gone;
    clearTimeout(t);
  };
  return { proc, stop, stderr: () => err };
}

/** The socket file appears at bind(), before listen(): only a connection that is accepted proves it is ready. */
export const socketReady = (p: string) => (): Promise<boolean> => new Promise((resolve) => {
  if (!existsSync(p)) { resolve(false); return; }
  const s = net.connect(p);
  s.once('connect', () => { s.destroy(); resolve(true); });
  s.once('error', () => resolve(false));
});
export const portReady = (port: number) => (): Promise<boolean> => new Promise((resolve) => {
  const s = net.connect(port, '127.0.0.1');
  s.once('connect', () => { s.destroy(); resolve(true); });
  s.once('error', () => resolve(false));
});

/** nbdkit on a Unix socket in `dir`; returns the nbd+unix URI too. */
export async function nbdkit(dir: string, name: string, args: string[]): Promise<Server & { uri: string; socket: string }> {
  const socket = path.join(dir, `${name}.sock`);
  const s = await startServer('nbdkit', ['-f', '--exit-with-parent', '-U', socket, ...args], socketReady(socket));
  return { ...s, socket, uri: `nbd+unix:///?socket=${socket}` };
}

/**
 * Reads the whole source the way the engine does: many reads in flight (bounded by maxInFlight),
 * with uneven sizes and unaligned offsets, assembled in order.
 */
export async function readAll(src: BlockSource, opts: { chunk?: number; uneven?: boolean; into?: boolean } = {}): Promise<Buffer> {
  const out = Buffer.alloc(src.capacity);
  const chunk = Math.min(opts.chunk ?? src.maxReadSize, src.maxReadSize);
  const ranges: Array<[number, number]> = [];
  let i = 0;
  for (let off = 0; off < src.capacity;) {
    const len = Math.min(src.capacity - off, opts.uneven ? Math.max(1, chunk - ((i++ * 7919) % 4097)) : chunk);
    ranges.push([off, len]);
    off += len;
  }
  let next = 0;
  const worker = async (): Promise<void> => {
    // With `into`, each worker recycles one buffer through readInto(), poisoned before every read.
    const mine = opts.into ? Buffer.alloc(chunk) : undefined;
    while (next < ranges.length) {
      const [off, len] = ranges[next++]!;
      let b: Buffer;
      if (mine) {
        if (!src.readInto) throw new Error(`${src.transport} has no readInto`);
        b = mine.subarray(0, len).fill(0xa5);
        await src.readInto(off, b);
      } else b = await src.read(off, len);
      if (b.length !== len) throw new Error(`read at ${off} returned ${b.length} bytes, wanted ${len}`);
      b.copy(out, off);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, src.maxInFlight) }, worker));
  return out;
}

/** Test data: 64 KiB blocks that are random, text-like, or zero (left as holes in a file). */
export function makeDiskData(size: number, seed = 1): Buffer {
  const b = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  const rnd = (): number => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
  for (let off = 0; off < size; off += 65536) {
    const kind = rnd() % 3;
    const end = Math.min(size, off + 65536);
    if (kind === 0) continue;
    let i = off;
    for (; i + 4 <= end; i += 4) b.writeUInt32LE(kind === 1 ? rnd() : 0x61626364 + (i & 0xff), i);
    for (; i < end; i++) b[i] = 0x5a;
  }
  return b;
}
