/**
 * The checks an EXTENT frame passes on arrival, before its payload is decoded or written: a whole
 * header, a disk of the cycle, a range inside that disk, a known codec and a payload that fits it.
 * The digest is checked later, against the decoded bytes, off the main thread (CodecPool.unpack).
 */
import { CODEC, EXTENT_HEADER, MAX_DATA_EXTENT, MAX_ZERO_EXTENT, ProtocolError, SAME_VERSION_FIX, decodeExtentHeader, type ExtentHeader } from '../transfer/protocol.ts';
import type { DiskSpec } from '../model/images.ts';

export interface CheckedExtent {
  header: ExtentHeader;
  /** The frame's bytes after the header (a view, not a copy). */
  payload: Buffer;
}

/** The extent in `body` (an EXTENT frame's body), or a ProtocolError naming what is wrong with it. */
export function checkExtentFrame(body: Buffer, disks: readonly DiskSpec[], cycleId: string): CheckedExtent {
  if (body.length < EXTENT_HEADER) throw new ProtocolError('BAD_LENGTH', `extent frame of ${body.length} bytes is shorter than its header`, { fix: SAME_VERSION_FIX });
  const h = decodeExtentHeader(body);
  const payload = body.subarray(EXTENT_HEADER);
  const disk = disks.find((d) => d.disk === h.disk);
  if (!disk) throw new ProtocolError('BAD_DISK', `disk ${h.disk} is not part of cycle ${cycleId}`);
  if (h.length === 0 || h.offset + h.length > disk.capacity) {
    throw new ProtocolError('OUT_OF_RANGE', `extent ${h.offset}+${h.length} is beyond disk ${h.disk} (capacity ${disk.capacity})`);
  }
  if (h.codec === CODEC.ZERO) {
    if (payload.length !== 0 || h.length > MAX_ZERO_EXTENT) throw new ProtocolError('BAD_LENGTH', `zero marker with ${payload.length} payload bytes or length ${h.length}`, { fix: SAME_VERSION_FIX });
  } else if (h.codec === CODEC.RAW || h.codec === CODEC.ZSTD) {
    if (h.length > MAX_DATA_EXTENT) throw new ProtocolError('BAD_LENGTH', `extent length ${h.length} exceeds ${MAX_DATA_EXTENT}`, { fix: SAME_VERSION_FIX });
    if (h.codec === CODEC.RAW && payload.length !== h.length) {
      throw new ProtocolError('BAD_LENGTH', `raw extent says ${h.length} bytes but carries ${payload.length}`, { fix: SAME_VERSION_FIX });
    }
  } else {
    throw new ProtocolError('BAD_CODEC', `unknown codec ${h.codec}`, { fix: SAME_VERSION_FIX });
  }
  return { header: h, payload };
}
