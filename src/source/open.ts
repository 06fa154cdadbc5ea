/**
 * Open a BlockSource from a URI. Plain paths (and file:// URIs) open a local file or block device.
 * Each transport adds one case here; its module loads when first used (an agent reading local
 * devices never loads the HTTP client).
 */
import type { BlockSource } from './types.ts';
import { UserError } from '../util/errors.ts';
import type { LocalSourceOptions } from './local/index.ts';
import type { NbdSourceOptions } from './nbd/index.ts';
import type { VddkSourceOptions } from './vddk/index.ts';
import type { HttpDatastoreOptions } from './http-datastore/index.ts';

export interface OpenSourceOptions {
  local?: LocalSourceOptions;
  nbd?: NbdSourceOptions;
  /** Library, credentials (never in the URI) and limits for vddk:// URIs. */
  vddk?: Partial<Omit<VddkSourceOptions, 'credentials'>> & { password?: string; cookie?: string };
  /** Cookie and trust for https://.../folder/ URIs. */
  http?: Omit<HttpDatastoreOptions, 'url'>;
}

export async function openSource(uri: string, opts: OpenSourceOptions = {}): Promise<BlockSource> {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(uri)?.[1]?.toLowerCase();
  switch (scheme) {
    case undefined:
      return (await import('./local/index.ts')).LocalSource.open(uri, opts.local);
    case 'file':
      return (await import('./local/index.ts')).LocalSource.open(decodeURIComponent(new URL(uri).pathname), opts.local);
    case 'nbd': case 'nbds': case 'nbd+unix': case 'nbds+unix':
      return (await import('./nbd/index.ts')).NbdSource.open(uri, opts.nbd);
    case 'vddk': {
      const { VddkSource, parseVddkUri } = await import('./vddk/index.ts');
      const { user, ...u } = parseVddkUri(uri);
      const { password, cookie, ...v } = opts.vddk ?? {};
      const credentials = password !== undefined ? { user: user ?? '', password } : cookie !== undefined ? { cookie, user } : undefined;
      return VddkSource.open({ ...v, ...u, credentials });
    }
    case 'https':
      if (!opts.http) throw new UserError('SOURCE_HTTP_TRUST', 'an https:// datastore source needs the vCenter session cookie and thumbprint', 'open it through a vCenter connection (job transport http-datastore)');
      return (await import('./http-datastore/index.ts')).HttpDatastoreSource.open({ ...opts.http, url: uri });
    default:
      throw new UserError('SOURCE_SCHEME', `unsupported source ${JSON.stringify(uri.replace(/\/\/[^@/]*@/, '//'))}: no transport for "${scheme}://"`,
        'use a local path (file or block device) or a supported transport URI');
  }
}

/** Opens every source of `uris`, or none: the ones opened are closed again when one fails. */
export async function openSources(uris: string[], opts: OpenSourceOptions = {}): Promise<BlockSource[]> {
  const out: BlockSource[] = [];
  try {
    for (const u of uris) out.push(await openSource(u, opts));
  } catch (e) {
    await Promise.all(out.map((s) => s.close()));
    throw e;
  }
  return out;
}
