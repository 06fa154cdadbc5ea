/** Shared set-up for the transfer and receiver tests: a real receiver on random ports, real TLS, real store. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import net from 'node:net';
import { pino } from 'pino';
import { REDACT_PATHS, type Logger } from '../../src/util/log.ts';
import { startReceiver, type ReceiverOptions, type RunningReceiver } from '../../src/receiver/server.ts';
import { Sender, type SenderOptions } from '../../src/transfer/sender.ts';
import { ControlClient } from '../../src/transfer/control-client.ts';

/** A pino logger whose JSON lines are kept in `lines` (with the project's redaction). */
export function captureLogger(): { logger: Logger; lines: Record<string, unknown>[]; text: () => string } {
  const raw: string[] = [];
  const stream = new Writable({ write(chunk, _enc, cb) { raw.push(String(chunk)); cb(); } });
  const logger = pino({ level: 'debug', redact: { paths: REDACT_PATHS, censor: '[redacted]' } }, stream);
  return {
    logger,
    get lines() { return raw.flatMap((t) => t.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>)); },
    text: () => raw.join(''),
  };
}

export interface TestRx {
  dir: string;
  rx: RunningReceiver;
  code: string;
  log: ReturnType<typeof captureLogger>;
  senderOpts(sourceId: string, extra?: Partial<SenderOptions>): SenderOptions;
  sender(sourceId: string, extra?: Partial<SenderOptions>): Promise<Sender>;
  control(): ControlClient;
  close(): Promise<void>;
}

export async function startTestReceiver(o: { drills?: ReceiverOptions['drills'] } = {}): Promise<TestRx> {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-rx-'));
  const log = captureLogger();
  const rx = await startReceiver({ dataDir: join(dir, 'rx'), controlPort: 0, dataPort: 0, listen: '127.0.0.1', logger: log.logger, ...(o.drills ? { drills: o.drills } : {}) });
  const code = rx.createdCode!.code;
  const t: TestRx = {
    dir, rx, code, log,
    senderOpts: (sourceId, extra = {}) => ({
      receiver: `127.0.0.1:${rx.controlPort}`, fingerprint: rx.fingerprint, credentialFile: join(dir, `${sourceId}.cred`),
      activationCode: code, sourceId, compression: 7, bandwidthMbps: 0, checksum: true, ...extra,
    }),
    sender: (sourceId, extra) => Sender.connect(t.senderOpts(sourceId, extra)),
    control: () => new ControlClient({ host: '127.0.0.1', port: rx.controlPort, fingerprint: rx.fingerprint }),
    async close() { await rx.close(); await rm(dir, { recursive: true, force: true }); },
  };
  return t;
}

export const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** A disk image in memory: random and text-like data in runs, with holes. */
export function makeDisk(size: number, seed = 1): Buffer {
  const b = Buffer.alloc(size);
  let x = seed;
  const rnd = () => { x = (x * 1103515245 + 12345) & 0x7fffffff; return x; };
  const text = Buffer.from('vmlift moves disk blocks from VMware to a receiver; lorem ipsum dolor sit amet. ');
  for (let off = 0; off < size; off += 64 * 1024) {
    const kind = rnd() % 3;
    const n = Math.min(64 * 1024, size - off);
    if (kind === 0) randomBytes(n).copy(b, off);
    else if (kind === 1) for (let i = 0; i < n; i += text.length) text.copy(b, off + i, 0, Math.min(text.length, n - i));
    // kind 2: hole
  }
  return b;
}

/** Send a whole in-memory disk in `step`-sized pieces (null for all-zero pieces). */
export async function sendDisk(cycle: { send(d: number, o: number, b: Buffer | null, l?: number): Promise<void> }, disk: number, data: Buffer, step = 1 << 20): Promise<void> {
  for (let off = 0; off < data.length; off += step) {
    const piece = data.subarray(off, Math.min(data.length, off + step));
    if (piece.every((v) => v === 0)) await cycle.send(disk, off, null, piece.length);
    else await cycle.send(disk, off, piece);
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = (s.address() as net.AddressInfo).port; s.close(() => resolve(p)); });
  });
}

/** Read a whole disk of a committed image. */
export async function readDisk(rx: RunningReceiver, sourceId: string, imageId: string, disk: number, size: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let off = 0; off < size; off += 16 << 20) parts.push(await rx.store.readImage(sourceId, imageId, disk, off, Math.min(16 << 20, size - off)));
  return Buffer.concat(parts);
}
