/**
 * The vim25 API version a session speaks: the server's own, read from /sdk/vimServiceVersions.xml
 * (or, where that file is missing, from ServiceContent.about.apiVersion), capped at the newest
 * version vmlift's trimmed WSDL was checked against. It goes into every SOAPAction ("urn:vim25/<v>").
 */
import { UserError } from '../util/errors.ts';

/** The oldest vSphere API vmlift works with (RetrievePropertiesEx paging, capacityInBytes, CBT as documented). */
export const MIN_API_VERSION = '6.0';
/** The newest API the trimmed WSDL's types were checked against (real 6.7 and 8.0.3 answers). */
export const MAX_API_VERSION = '8.0.3.0';

export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number), pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d) return Math.sign(d);
  }
  return 0;
}

/** The current urn:vim25 version listed in a vimServiceVersions.xml document (not its priorVersions). */
export function parseServiceVersions(xml: string): string | null {
  for (const m of xml.matchAll(/<namespace>([\s\S]*?)<\/namespace>/g)) {
    const ns = m[1]!;
    if (/<name>\s*urn:vim25\s*<\/name>/.test(ns)) {
      const v = /<version>\s*([\d.]+)\s*<\/version>/.exec(ns.replace(/<priorVersions>[\s\S]*?<\/priorVersions>/g, ''));
      return v ? v[1]! : null;
    }
  }
  return null;
}

/** The version to speak with a server that reports `server`; refuses servers older than MIN_API_VERSION. */
export function chooseApiVersion(server: string, url: string): string {
  if (!/^\d+(\.\d+)*$/.test(server)) {
    throw new UserError('VC_API_VERSION', `${url} reports vSphere API version "${server}", which vmlift cannot read`,
      'check --server: it must be the vCenter (or ESXi) SDK URL, https://HOST/sdk');
  }
  if (compareVersions(server, MIN_API_VERSION) < 0) {
    throw new UserError('VC_UNSUPPORTED_VERSION', `unsupported vSphere version ${server}; vmlift needs ${MIN_API_VERSION} or later`,
      `upgrade vCenter (and the ESXi hosts) to vSphere ${MIN_API_VERSION} or later`);
  }
  return compareVersions(server, MAX_API_VERSION) > 0 ? MAX_API_VERSION : server;
}

/** URL of the version listing beside the SDK endpoint (https://HOST/sdk → https://HOST/sdk/vimServiceVersions.xml). */
export function serviceVersionsUrl(sdkUrl: string): string {
  return `${sdkUrl.replace(/\/+$/, '')}/vimServiceVersions.xml`;
}
