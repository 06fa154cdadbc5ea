import type { Command } from 'commander';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { formatBytes, printResult, table } from '../output.ts';
import { addOptions, type OptionSpec } from '../options.ts';
import { openSource, type OpenSourceOptions } from '../../source/open.ts';
import type { BlockSource, SourceExtent } from '../../source/types.ts';
import { UserError } from '../../util/errors.ts';
import { readSecret } from '../../util/secret.ts';

interface SourceFlags {
  vddkLibdir?: string; vddkConfig?: string; vddkTransports?: string; passwordFile?: string; cookieFile?: string;
  thumbprint?: string; tlsCa?: string; tlsFingerprint?: string; json?: boolean; map?: boolean;
}

/** Each transport's flags: vddk://, nbds:// and https:// datastore URLs. */
const VDDK_OPTIONS: readonly OptionSpec[] = [
  ['--vddk-libdir <dir>', 'VDDK folder (holds lib64/libvixDiskLib.so.N); default $VMLIFT_VDDK_LIBDIR'],
  ['--vddk-config <file>', 'VDDK configuration file passed to VixDiskLib_InitEx'],
  ['--vddk-transports <modes>', 'VDDK transport modes in order, e.g. nbdssl:nbd, hotadd, san'],
  ['--password-file <file>', 'vCenter password for vddk:// (or $VMLIFT_VC_PASSWORD); never on the command line'],
];
const HTTP_OPTIONS: readonly OptionSpec[] = [
  ['--cookie-file <file>', 'vSphere session cookie (vmware_soap_session=...) for vddk:// or https:// datastore URLs'],
  ['--thumbprint <sha256>', 'pinned SHA-256 thumbprint of vCenter, for https:// datastore URLs'],
];
const NBD_TLS_OPTIONS: readonly OptionSpec[] = [
  ['--tls-ca <file>', 'CA certificate (PEM) an nbds:// server certificate must chain to'],
  ['--tls-fingerprint <sha256>', 'pinned SHA-256 fingerprint of an nbds:// server certificate'],
];

function withSourceFlags(c: Command): Command {
  for (const table of [VDDK_OPTIONS, HTTP_OPTIONS, NBD_TLS_OPTIONS]) addOptions(c, table);
  return c.option('--json', 'print JSON');
}

async function sourceOptions(o: SourceFlags): Promise<OpenSourceOptions> {
  const password = await readSecret({ file: o.passwordFile, env: 'VMLIFT_VC_PASSWORD', what: 'password' });
  const cookie = o.cookieFile ? (await readSecret({ file: o.cookieFile, what: 'session cookie' }))?.trim() : undefined;
  const opts: OpenSourceOptions = {
    vddk: { libdir: o.vddkLibdir, configFile: o.vddkConfig, transports: o.vddkTransports, password, cookie },
  };
  if (o.tlsCa || o.tlsFingerprint) {
    const ca = o.tlsCa ? await readFile(o.tlsCa).catch((e: Error) => {
      throw new UserError('TLS_CA_FILE', `cannot read ${o.tlsCa}: ${e.message}`, 'give a PEM CA certificate file');
    }) : undefined;
    opts.nbd = { tls: { ca, fingerprint256: o.tlsFingerprint } };
  }
  if (o.thumbprint) opts.http = { trust: { thumbprint: o.thumbprint }, cookie };
  return opts;
}

async function withSource<T>(uri: string, o: SourceFlags, fn: (s: BlockSource) => Promise<T>): Promise<T> {
  const s = await openSource(uri, await sourceOptions(o));
  try { return await fn(s); } finally { await s.close(); }
}

/**
 * SHA-256 of the whole source, read in order with up to maxInFlight reads ahead into a ring of
 * maxInFlight buffers (memory: maxInFlight x maxReadSize, allocated once).
 */
async function checksum(s: BlockSource): Promise<{ sha256: string; bytes: number; seconds: number }> {
  const h = createHash('sha256');
  const t0 = performance.now();
  const ring = s.readInto ? Array.from({ length: s.maxInFlight }, () => Buffer.allocUnsafe(s.maxReadSize)) : [];
  const window: Array<Promise<Buffer>> = [];
  let next = 0;
  let issued = 0;
  const issue = (): void => {
    const len = Math.min(s.maxReadSize, s.capacity - next);
    const slot = ring.length ? ring[issued % ring.length]!.subarray(0, len) : undefined;
    window.push(slot ? s.readInto!(next, slot).then(() => slot) : s.read(next, len));
    next += len;
    issued++;
  };
  while (next < s.capacity && window.length < s.maxInFlight) issue();
  let bytes = 0;
  while (window.length) {
    const b = await window.shift()!;
    h.update(b);
    bytes += b.length;
    if (next < s.capacity) issue();
  }
  return { sha256: h.digest('hex'), bytes, seconds: (performance.now() - t0) / 1000 };
}

export function register(program: Command): void {
  const src = program.command('source').description('disk sources: local paths, nbd://, nbds://, nbd+unix://, vddk://, https://.../folder/ datastore URLs');

  withSourceFlags(src.command('info').description('open a source and show its transport, size and limits')
    .argument('<uri>', 'path or URI of the disk')
    .option('--map', 'also list allocated (data) and zero/hole extents'))
    .action(async (uri: string, o: SourceFlags) => {
      const r = await withSource(uri, o, async (s) => {
        const extents: SourceExtent[] = [];
        if (o.map && s.extents) for await (const e of s.extents()) extents.push(e);
        return {
          uri: s.uri, transport: s.transport, capacity: s.capacity, maxReadSize: s.maxReadSize, maxInFlight: s.maxInFlight,
          ...(o.map ? { dataBytes: extents.filter((e) => e.data).reduce((a, e) => a + e.length, 0), extents } : {}),
        };
      });
      printResult(o.json, r, (x) => [
        `${x.uri}: ${x.transport}, ${formatBytes(x.capacity)} (${x.capacity} bytes), reads up to ${formatBytes(x.maxReadSize)} x ${x.maxInFlight}`,
        ...(x.extents ? [`data: ${formatBytes(x.dataBytes!)} in ${x.extents.filter((e) => e.data).length} extents`,
          table(['offset', 'length', 'kind'], x.extents.slice(0, 200).map((e) => [e.offset, e.length, e.data ? 'data' : 'zero'])),
          ...(x.extents.length > 200 ? [`... ${x.extents.length - 200} more (use --json)`] : [])] : []),
      ].join('\n'));
    });

  withSourceFlags(src.command('checksum').description('read a whole source and print its SHA-256 (checks a transport end to end)')
    .argument('<uri>', 'path or URI of the disk'))
    .action(async (uri: string, o: SourceFlags) => {
      const r = await withSource(uri, o, async (s) => ({ uri: s.uri, transport: s.transport, ...(await checksum(s)) }));
      printResult(o.json, { ...r, mbPerSecond: Math.round(r.bytes / 1e6 / r.seconds) },
        (x) => `${x.sha256}  ${x.uri} (${x.transport}, ${formatBytes(x.bytes)} in ${x.seconds.toFixed(1)} s, ${x.mbPerSecond} MB/s)`);
    });
}
