import { createHash, timingSafeEqual } from 'node:crypto';

/**
 * True when the `authorization` header carries `Bearer <want>`. Both sides are hashed first, so the
 * comparison takes the same time whatever the given token's length or content.
 */
export function tokenMatches(authorization: string | undefined, want: string): boolean {
  const h = authorization ?? '';
  const given = h.startsWith('Bearer ') ? h.slice(7) : '';
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(want).digest();
  return timingSafeEqual(a, b) && want.length > 0 && given.length > 0;
}
