/**
 * Open a BlockSource from a URI. Plain paths (and file:// URIs) open a local file or block device.
 * Each transport adds one case here.
 */
import type { BlockSource } from './types.ts';
import { UserError } from '../util/errors.ts';
import { LocalSource, type LocalSourceOptions } from './local/index.ts';

export interface OpenSourceOptions {
  local?: LocalSourceOptions;
}

export async function openSource(uri: string, opts: OpenSourceOptions = {}): Promise<BlockSource> {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(uri)?.[1]?.toLowerCase();
  switch (scheme) {
    case undefined:
      return LocalSource.open(uri, opts.local);
    case 'file':
      return LocalSource.open(decodeURIComponent(new URL(uri).pathname), opts.local);
    default:
      throw new UserError('SOURCE_SCHEME', `unsupported source ${JSON.stringify(uri.replace(/\/\/[^@/]*@/, '//'))}: no transport for "${scheme}://"`,
        'use a local path (file or block device) or a supported transport URI');
  }
}
