import { UserError } from '../../util/errors.ts';
import type { VddkSourceOptions } from './source.ts';

export function isVddkUri(spec: string): boolean {
  return /^vddk:\/\//i.test(spec);
}

/**
 * vddk://[user@]server[:port]/<disk path, percent-encoded>?vm=vm-N[&snapshot=snapshot-N][&thumbprint=..][&transports=nbdssl:nbd][&kind=vcenter|esxi]
 * vddk:///<local path>. Passwords never travel in the URI: give them through the options (a secret file or env).
 */
export function parseVddkUri(spec: string): Omit<VddkSourceOptions, 'credentials'> & { user?: string } {
  const bad = (why: string): never => {
    throw new UserError('VDDK_BAD_URI', `invalid VDDK URI "${spec.replace(/\/\/[^@/]*@/, '//')}": ${why}`,
      'use vddk://USER@VCENTER/%5Bdatastore1%5D%20vm%2Fvm.vmdk?vm=vm-42&snapshot=snapshot-7&thumbprint=AA:BB:...');
  };
  let u: URL;
  try { u = new URL(spec); } catch { return bad('not a URI'); }
  if (u.protocol !== 'vddk:') bad('scheme must be vddk://');
  if (u.password) bad('put the password in a secret file or environment variable, not in the URI');
  for (const k of u.searchParams.keys()) if (!['vm', 'snapshot', 'thumbprint', 'transports', 'kind'].includes(k)) bad(`unknown parameter "${k}"`);
  let diskPath: string;
  try { diskPath = decodeURIComponent(u.pathname.replace(/^\//, '')); } catch { return bad('bad percent-encoding in the disk path'); }
  if (!diskPath) bad('missing disk path');
  const vm = u.searchParams.get('vm') ?? undefined;
  const snapshot = u.searchParams.get('snapshot') ?? undefined;
  if (vm && !/^vm-\d+$/.test(vm)) bad(`vm must be a managed object id like vm-42, got "${vm}"`);
  if (snapshot && !/^snapshot-\d+$/.test(snapshot)) bad(`snapshot must be a managed object id like snapshot-7, got "${snapshot}"`);
  const kind = u.searchParams.get('kind') ?? undefined;
  if (kind !== undefined && kind !== 'vcenter' && kind !== 'esxi') bad(`kind must be vcenter or esxi, got "${kind}"`);
  if (!u.hostname) return { diskPath: '/' + diskPath.replace(/^\//, '') };
  if (!vm) bad('a remote disk needs ?vm=vm-N');
  return {
    server: u.hostname,
    port: u.port ? Number(u.port) : undefined,
    user: u.username ? decodeURIComponent(u.username) : undefined,
    diskPath, vm, snapshot,
    thumbprint: u.searchParams.get('thumbprint') ?? undefined,
    transports: u.searchParams.get('transports') ?? undefined,
    ...(kind ? { serverKind: kind as 'vcenter' | 'esxi' } : {}),
  };
}
