/**
 * Block digests (first 16 bytes of SHA-256 per block) and all-zero flags, computed in worker
 * threads so hashing a window overlaps reading and sending the previous ones (an incremental
 * cycle hashes every allocated block of every device).
 */
import { Worker } from 'node:worker_threads';

export interface WindowDigests {
  /** 16 bytes per block. */
  digests: Buffer;
  /** 1 where the block is all zeros. */
  zero: Uint8Array;
}

// Plain JS run with eval: workers need no TypeScript loader.
const WORKER_SRC = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const zeroBlocks = new Map();
parentPort.on('message', (m) => {
  try {
    const data = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
    const n = Math.ceil(data.length / m.blockSize);
    const digests = new Uint8Array(n * 16);
    const zero = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      const b = data.subarray(i * m.blockSize, Math.min(data.length, (i + 1) * m.blockSize));
      let z = zeroBlocks.get(b.length);
      if (!z) { z = Buffer.alloc(b.length); zeroBlocks.set(b.length, z); }
      if (b.equals(z)) zero[i] = 1;
      digests.set(createHash('sha256').update(b).digest().subarray(0, 16), i * 16);
    }
    parentPort.postMessage({ id: m.id, digests, zero }, [digests.buffer, zero.buffer]);
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: String(e && e.message || e) });
  }
});
`;

interface Reply { id: number; digests?: Uint8Array; zero?: Uint8Array; error?: string }

export class DigestPool {
  private readonly workers: { w: Worker; busy: number }[] = [];
  private readonly pending = new Map<number, { resolve: (r: WindowDigests) => void; reject: (e: Error) => void }>();
  private nextId = 1;

  constructor(size = 2) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(WORKER_SRC, { eval: true });
      const slot = { w, busy: 0 };
      w.on('message', (r: Reply) => {
        const p = this.pending.get(r.id);
        if (!p) return;
        this.pending.delete(r.id);
        if (--slot.busy === 0) w.unref();
        if (r.error !== undefined) p.reject(new Error(`block digest worker: ${r.error}`));
        else p.resolve({ digests: Buffer.from(r.digests!.buffer, r.digests!.byteOffset, r.digests!.byteLength), zero: r.zero! });
      });
      w.on('error', (e) => { for (const p of this.pending.values()) p.reject(e); this.pending.clear(); });
      w.unref();
      this.workers.push(slot);
    }
  }

  /** Digests of the `blockSize` blocks of a copy of `data` (the caller keeps `data`). */
  digest(data: Uint8Array, blockSize: number): Promise<WindowDigests> {
    let slot = this.workers[0]!;
    for (const s of this.workers) if (s.busy < slot.busy) slot = s;
    const id = this.nextId++;
    const copy = new Uint8Array(data);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (slot.busy++ === 0) slot.w.ref();
      slot.w.postMessage({ id, data: copy, blockSize }, [copy.buffer]);
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((s) => s.w.terminate()));
  }
}

let shared: DigestPool | undefined;
export function sharedDigestPool(): DigestPool {
  shared ??= new DigestPool(2);
  return shared;
}
