/**
 * The wire's format version. A sender says it on every control request (header) and in HELLO; the
 * receiver says it in whoami. A peer of another version is refused before any extent moves, with
 * both versions and which side to upgrade.
 *
 *   1  (until issue 16) extent digests are the SHA-256 of the extent's bytes; no version on the wire
 *   2  extent digests are tree digests (util/tree-digest.ts) over the SHA-256 of each 4 KiB block
 */
import { CodedError, type ErrorReport } from '../util/errors.ts';

export const WIRE_VERSION = 2;
/** The control requests' header that carries the sender's wire version. */
export const HDR_WIRE = 'x-vmlift-wire';

/** The version a peer declared: a missing one is version 1 (which declared none). */
export function declaredWireVersion(v: unknown): number | null {
  if (v === undefined || v === null) return 1;
  const n = typeof v === 'string' ? Number(v) : v;
  return typeof n === 'number' && Number.isInteger(n) && n >= 1 ? n : null;
}

/** What the receiver refuses a sender of another version with (HTTP or ERROR frame). */
export function wireVersionRefusal(senderVersion: number | null): ErrorReport {
  const s = senderVersion === null ? 'an unknown wire version' : `wire version ${senderVersion}`;
  return {
    code: 'WIRE_VERSION',
    message: `this receiver speaks wire version ${WIRE_VERSION}, the sender ${s}`,
    fix: senderVersion !== null && senderVersion > WIRE_VERSION
      ? 'upgrade the receiver to the vmlift version of the sender'
      : 'upgrade the agent or connector to the vmlift version of the receiver',
  };
}

/** The sender's check of the version the receiver declared in whoami. */
export class WireVersionError extends CodedError {}
export function checkReceiverWireVersion(declared: unknown, receiver: string): void {
  const v = declaredWireVersion(declared);
  if (v === WIRE_VERSION) return;
  throw new WireVersionError('WIRE_VERSION', `receiver ${receiver} speaks ${v === null ? 'an unknown wire version' : `wire version ${v}`}, this sender wire version ${WIRE_VERSION}`, {
    fix: v !== null && v > WIRE_VERSION
      ? 'upgrade this agent or connector to the vmlift version of the receiver'
      : 'upgrade the receiver to the vmlift version of this agent or connector (`vmlift --version` on both)',
  });
}
