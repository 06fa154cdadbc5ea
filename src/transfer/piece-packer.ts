/**
 * Turns the pieces of a `send` into packed extents: zero pieces into markers, data pieces hashed
 * and compressed (at the level the compression governor picks) in the shared codec pool. It counts
 * the packs in flight, so the pump can tell a codec queue from a slow source.
 */
import type { CompressionGovernor, PackPhase } from './compression-governor.ts';
import { CODEC_WORKERS, sharedCodecPool, type Packed } from './codec-pool.ts';
import type { SendOptions } from './contract.ts';
import { CODEC } from './protocol.ts';

export interface PackedPiece {
  packed: Promise<Packed>;
  /** The governor's phase the piece was packed in (undefined: a marker, or compression off). */
  phase: PackPhase | undefined;
  /** The packed piece was copied from the caller's bytes: the sender holds them no longer. */
  copied?: boolean;
}

/**
 * Packs in flight beyond which `send` waits for one to finish: enough to keep every codec worker
 * busy, few enough that pieces queued for a worker do not fill the send window with copies.
 */
export const MAX_PACKS = 4 * CODEC_WORKERS;

export class PiecePacker {
  private outstanding = 0;
  private waiters: (() => void)[] = [];

  /** `zstdLevel`: the configured level for new pieces (null: compression off). */
  constructor(private readonly governor: CompressionGovernor, private readonly zstdLevel: () => number | null) {}

  /** More packs in flight than codec workers: waiting for one now is waiting for the codec. */
  get codecQueued(): boolean { return this.outstanding > CODEC_WORKERS; }

  /** MAX_PACKS packs in flight: wait for `room` before the next. */
  get full(): boolean { return this.outstanding >= MAX_PACKS; }
  /** Resolves once a pack in flight finished. */
  room(): Promise<void> { return new Promise((r) => this.waiters.push(r)); }

  /**
   * Pack `n` bytes at `pos` of `data` (null: zeros, a marker). `handOver`: the caller gave `data`
   * up; a piece that is all of it, and all of its own ArrayBuffer, moves to the worker without a
   * copy; one that is all of it but a view of a larger buffer is sent raw without a copy. `digest`: the caller's tree digest of this piece (not all zeros): it is not hashed again.
   */
  pack(data: Buffer | null, pos: number, n: number, opts?: SendOptions): PackedPiece {
    let piece: PackedPiece;
    if (!data) {
      piece = { packed: Promise.resolve({ codec: CODEC.ZERO, payload: null, digest: Buffer.alloc(32) }), phase: undefined };
    } else {
      const whole = n === data.length;
      const owned = !!opts?.handOver && whole && data.byteOffset === 0
        && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer;
      const { level, tag } = this.governor.pick(this.zstdLevel(), n);
      // a view handed over whole (one piece of a larger buffer) is not copied when it is sent raw
      const given = !owned && !!opts?.handOver && whole;
      const pool = sharedCodecPool();
      piece = { packed: pool.pack(owned ? data : data.subarray(pos, pos + n), level, owned, opts?.digest, given), phase: tag, copied: !owned && !(given && pool.packsHere(level, n, opts?.digest)) };
    }
    this.outstanding++;
    const settled = (): void => {
      this.outstanding--;
      const w = this.waiters;
      this.waiters = [];
      for (const r of w) r();
    };
    piece.packed.then(settled, settled);
    return piece;
  }
}
