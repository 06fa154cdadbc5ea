import { readFile } from 'node:fs/promises';
import { UserError } from './errors.ts';

/**
 * Read a secret (password, activation code) from a file or an environment variable, never argv.
 * Trailing newlines of a file are dropped.
 */
export async function readSecret(opts: { file?: string; env?: string; what: string }): Promise<string | undefined> {
  if (opts.file) {
    try {
      return (await readFile(opts.file, 'utf8')).replace(/\r?\n$/, '');
    } catch (e) {
      throw new UserError('SECRET_FILE', `cannot read the ${opts.what} file ${opts.file}: ${(e as Error).message}`,
        `check the path and its permissions`, { cause: e });
    }
  }
  if (opts.env && process.env[opts.env] !== undefined) return process.env[opts.env];
  return undefined;
}
