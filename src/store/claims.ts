/**
 * Digests a sender claims for bytes the store has not checked yet (WriteExtentOptions.check): the
 * one check and the one refusal, BAD_DIGEST, whichever path stores the bytes.
 */
import { StoreError } from './types.ts';
import { treeDigestAsync } from '../util/tree-digest.ts';

/** The refusal of bytes whose tree digest is not the one their sender claimed. */
export function digestRefused(claimed: Uint8Array, computed: Uint8Array): StoreError {
  return new StoreError('BAD_DIGEST', `extent digest mismatch: received ${Buffer.from(claimed).toString('hex').slice(0, 16)}…, computed ${Buffer.from(computed).toString('hex').slice(0, 16)}…`,
    { fix: 'none on the user\'s side: the bytes changed between the sender and the store; the sender resends from what the receiver holds' });
}

/** Resolves when `claimed` is the tree digest of `data` (the name chunks.ts gives it); else rejects with BAD_DIGEST. */
export async function checkClaim(data: Uint8Array, claimed: Uint8Array): Promise<void> {
  const d = await treeDigestAsync(data);
  if (!d.equals(claimed)) throw digestRefused(claimed, d);
}
