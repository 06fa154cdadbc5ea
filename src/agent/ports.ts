/**
 * What the agent needs from the transfer layer's sender (src/transfer/sender.ts). Kept as an
 * interface so the cycle runner can be read and reasoned about on its own.
 */
import type { DiskSpec, HeldRanges, ImageInfo, SourceDigest } from '../model/images.ts';

export interface SessionStats { payloadBytes: number; wireBytes: number; extents: number; resentBytes: number }

export interface AgentSession {
  readonly held: HeldRanges[];
  /** `handOver`: the caller will not touch `data` again (the sender may move it to a worker without a copy). */
  send(disk: number, offset: number, data: Buffer | null, length: number, opts?: { handOver?: boolean; digest?: Buffer }): Promise<void>;
  stats(): SessionStats;
  commit(o: { meta?: Record<string, unknown>; sourceDigests?: SourceDigest[] }): Promise<ImageInfo>;
  abort(): Promise<void>;
}

export interface AgentSender {
  listImages(): Promise<ImageInfo[]>;
  /** First 16 bytes of SHA-256 of every `blockSize` block of a committed image's disk, in order. */
  blockDigests(imageId: string, disk: number, blockSize: number): AsyncIterable<Uint8Array> | Promise<AsyncIterable<Uint8Array> | Uint8Array>;
  beginCycle(o: { cycleId: string; disks: DiskSpec[]; baseImageId: string | null; maxImages?: number }): Promise<AgentSession>;
  close(): Promise<void> | void;
}
