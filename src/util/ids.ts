import { UserError } from './errors.ts';

/** Ids that become path components: lowercase letters, digits and '-', 1–64 chars, no leading '-'. */
const ID_RE = /^[a-z0-9][a-z0-9-]{0,63}$/;

export function isValidId(id: unknown): id is string {
  return typeof id === 'string' && ID_RE.test(id);
}

/** Throws a UserError naming `what` when `id` is not a valid id. Call before an id touches a path. */
export function assertId(id: unknown, what = 'id'): string {
  if (!isValidId(id)) {
    // Ids are compared byte for byte; lowercase ASCII only means no two ids differ only in case or
    // Unicode form (Web01, NFD accents, fullwidth letters, Cyrillic homoglyphs are all refused).
    const folded = typeof id === 'string' ? id.normalize('NFKC').toLowerCase() : '';
    if (folded !== id && ID_RE.test(folded)) {
      throw new UserError('BAD_ID', `invalid ${what} ${JSON.stringify(id)}: ids are lowercase ASCII (a-z, 0-9, '-'), so none differs from another only in case or Unicode form`,
        `use the ${what} "${folded}"`);
    }
    throw new UserError('BAD_ID', `invalid ${what} ${JSON.stringify(id)}: only a-z, 0-9 and '-' are allowed (1-64 characters, not starting with '-')`,
      `use a ${what} made of lowercase letters, digits and '-'`);
  }
  return id;
}
