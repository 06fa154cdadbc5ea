/**
 * The sending side of the vmlift wire protocol (used by the agent and the agentless engine): one
 * authenticated session of a source with its receiver (contract.ts `ReceiverSession`). Its cycles
 * are CycleSessions (cycle-session.ts, which says how sending, resume and errors work).
 *
 * ```ts
 * const sender = await Sender.connect({ receiver: 'host[:8080]', fingerprint, credentialFile,
 *   activationCode /* only needed the first time *\/, sourceId, compression: 7, bandwidthMbps: 0, checksum: true });
 * const images = await sender.listImages();
 * for await (const d of sender.blockDigests(imageId, disk, 65536)) { ... }   // 16-byte digests in block order
 * const cycle = await sender.beginCycle({ cycleId, disks, maxImages: 3 });   // resumes an open cycle of that id
 * cycle.held                       // what the receiver already holds of this cycle: do not read it again
 * await cycle.send(disk, offset, buffer);          // resolves once accepted into the window (backpressure)
 * await cycle.send(disk, offset, null, length);    // zeros, sent as a marker
 * await cycle.flush();             // optional: wait until everything sent so far is durable on the receiver
 * const image = await cycle.commit({ meta, sourceDigests });
 * await sender.close();
 * ```
 */
import type { Logger } from '../util/log.ts';
import { silentLogger } from '../util/log.ts';
import { UserError } from '../util/errors.ts';
import { assertId } from '../util/ids.ts';
import { ControlClient, type ControlTarget } from './control-client.ts';
import { normalizeFingerprint, parseHostPort, parseProxy, redactUrl, ConnectError } from './connect.ts';
import { zstdLevelFor } from './levels.ts';
import { TokenBucket } from './token-bucket.ts';
import { windowLimit } from './window-size.ts';
import { obtainCredential } from './credential.ts';
import { CycleSession, type SessionHost } from './cycle-session.ts';
import { linkTimeouts, type LinkTimeouts } from './link-timeouts.ts';
import { checkReceiverWireVersion } from './wire-version.ts';
import type { BeginCycleRequest, ReceiverSession } from './contract.ts';
import type { DiskSpec, HeldRanges, ImageInfo } from '../model/images.ts';

export type { DiskSpec, HeldRanges, ImageInfo };
export type { CycleSession, ProgressEvent } from './cycle-session.ts';

export interface SenderOptions {
  /** host[:controlPort] (default port 8080). */
  receiver: string;
  /** Data port; default: the one the receiver advertises (8703 unless configured otherwise). */
  dataPort?: number;
  /** Receiver certificate SHA-256, hex with or without colons. */
  fingerprint: string;
  /** Per-source credential; created by registering with `activationCode` when absent. */
  credentialFile: string;
  activationCode?: string;
  sourceId: string;
  sourceLabel?: string;
  /** http://[user[:pass]@]host:port */
  proxy?: string;
  proxyPassword?: string;
  /** 0–10, 0 = none. */
  compression: number;
  /** Mbps on wire bytes, 0 = unlimited. */
  bandwidthMbps: number;
  /** Send source digests at commit and have the receiver verify the committed image. */
  checksum: boolean;
  logger?: Logger;
  /** Bytes of unacknowledged payload kept for resend (default 64 MiB). */
  windowBytes?: number;
  /** Give up reconnecting after this long without progress (default 10 min). */
  resumeTimeoutMs?: number;
  /** The command that accepts a new receiver fingerprint (FINGERPRINT_MISMATCH's fix); default: --fingerprint NEW. */
  acceptPin?: (presented: string) => string;
  /** How long a silent link is waited for before reconnecting (defaults in link-timeouts.ts). */
  timeouts?: Partial<LinkTimeouts>;
}

export interface SourceDigest { disk: number; sha256?: string; extents?: { offset: number; length: number; sha256: string }[] }

export class Sender implements ReceiverSession {
  readonly sourceId: string;
  private compression: number;
  private zstdLevel: number | null;
  private readonly bucket: TokenBucket;
  private readonly sessions = new Set<CycleSession>();
  private readonly host: SessionHost;
  private closed = false;

  private constructor(opts: SenderOptions, readonly control: ControlClient, target: ControlTarget, sourceId: string, credential: string, dataPort: number, log: Logger) {
    this.sourceId = sourceId;
    this.compression = opts.compression;
    this.zstdLevel = zstdLevelFor(opts.compression);
    this.bucket = new TokenBucket(opts.bandwidthMbps);
    const windowBytes = opts.windowBytes ?? 64 * 1024 * 1024;
    this.host = {
      sourceId, credential, control, log,
      data: { ...target, dataPort },
      checksum: opts.checksum,
      windowBytes,
      windowLimit: () => windowLimit(windowBytes, this.bucket.mbps),
      resumeTimeoutMs: opts.resumeTimeoutMs ?? 10 * 60 * 1000,
      zstdLevel: () => this.zstdLevel,
      takeTokens: (n) => this.bucket.take(n),
      listImages: () => this.listImages(),
    };
  }

  static async connect(o: SenderOptions): Promise<Sender> {
    const log = (o.logger ?? silentLogger).child({ component: 'sender', sourceId: o.sourceId });
    assertId(o.sourceId, 'source id');
    checkCompression(o.compression);
    checkBandwidth(o.bandwidthMbps);
    const fingerprint = normalizeFingerprint(o.fingerprint);
    const { host, port } = parseHostPort(o.receiver, 8080);
    const proxy = o.proxy ? parseProxy(o.proxy, o.proxyPassword) : undefined;
    const target: ControlTarget = { host, port, fingerprint, proxy, acceptPin: o.acceptPin, timeouts: linkTimeouts(o.timeouts) };
    const control = new ControlClient(target);
    const cred = await obtainCredential(control, o, log);
    control.setAuth(cred);
    const who = await control.whoami();
    checkReceiverWireVersion(who.wireVersion, `${host}:${port}`);
    log.info({ receiver: `${host}:${port}`, proxy: o.proxy ? redactUrl(o.proxy) : undefined }, 'connected to receiver');
    return new Sender(o, control, target, cred.sourceId, cred.credential, o.dataPort ?? who.dataPort, log);
  }

  async listImages(): Promise<ImageInfo[]> {
    return (await this.control.images()).images;
  }

  /** Delete one of this source's images on the receiver (refused while an export or verify uses it). */
  async deleteImage(imageId: string): Promise<void> {
    await this.control.deleteImage(assertId(imageId, 'image id'));
  }

  async listDisks(): Promise<{ imageId: string | null; disks: DiskSpec[] }> {
    return this.control.disks();
  }

  /** Digest (first 16 bytes of SHA-256) of every `blockSize` block of a disk of an image, streamed. */
  async *blockDigests(imageId: string, disk: number, blockSize: number): AsyncIterable<Buffer> {
    let rest = Buffer.alloc(0);
    for await (const chunk of this.control.digests(imageId, { disk, blockSize })) {
      const buf = rest.length ? Buffer.concat([rest, chunk]) : chunk;
      const whole = buf.length - (buf.length % 16);
      for (let i = 0; i < whole; i += 16) yield buf.subarray(i, i + 16);
      rest = Buffer.from(buf.subarray(whole));
    }
    if (rest.length) throw new ConnectError('block digest stream ended in the middle of a digest');
  }

  async beginCycle(o: BeginCycleRequest): Promise<CycleSession> {
    if (this.closed) throw new Error('sender is closed');
    assertId(o.cycleId, 'cycle id');
    if (o.maxImages !== undefined && !(Number.isInteger(o.maxImages) && o.maxImages >= 1 && o.maxImages <= 10)) {
      throw new UserError('BAD_MAX_IMAGES', `max images ${o.maxImages} is outside 1..10`, 'choose between 1 and 10 kept images');
    }
    const s = new CycleSession(this.host, o);
    await s.start();
    this.sessions.add(s);
    s.once('closed', () => this.sessions.delete(s));
    return s;
  }

  setBandwidthMbps(n: number): void { checkBandwidth(n); this.bucket.setRate(n); }
  setCompression(level: number): void { checkCompression(level); this.compression = level; this.zstdLevel = zstdLevelFor(level); }
  get compressionLevel(): number { return this.compression; }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of this.sessions) s.detach();
  }
}

function checkCompression(n: number): void {
  if (!(Number.isInteger(n) && n >= 0 && n <= 10)) {
    throw new UserError('BAD_COMPRESSION', `compression level ${n} is outside 0..10`, 'use 0 (none) to 10 (smallest); 7 is the default');
  }
}
function checkBandwidth(n: number): void {
  if (!(typeof n === 'number' && Number.isFinite(n) && n >= 0)) {
    throw new UserError('BAD_BANDWIDTH', `bandwidth limit ${n} Mbps is not a number >= 0`, 'use 0 for unlimited or a positive number of Mbps');
  }
}
