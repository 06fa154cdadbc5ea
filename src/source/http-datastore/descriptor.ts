import { UserError } from '../../util/errors.ts';

export interface VmdkExtent { access: string; sectors: number; type: string; file: string; offset: number }
export interface VmdkDescriptor { createType: string; parentCID: string | undefined; parentFileNameHint: string | undefined; extents: VmdkExtent[] }

/** The text descriptor of a VMDK (the small "vm.vmdk" beside "vm-flat.vmdk"). */
export function parseDescriptor(text: string): VmdkDescriptor {
  const kv = new Map<string, string>();
  const extents: VmdkExtent[] = [];
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const ext = /^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?/.exec(line);
    if (ext) {
      extents.push({ access: ext[1]!, sectors: Number(ext[2]), type: ext[3]!.toUpperCase(), file: ext[4] ?? '', offset: Number(ext[5] ?? 0) });
      continue;
    }
    const m = /^([\w.]+)\s*=\s*"?([^"]*)"?$/.exec(line);
    if (m) kv.set(m[1]!.toLowerCase(), m[2]!);
  }
  return { createType: kv.get('createtype') ?? '', parentCID: kv.get('parentcid'), parentFileNameHint: kv.get('parentfilenamehint'), extents };
}

const FLAT_TYPES = new Set(['vmfs', 'monolithicflat', 'vmfsthin', 'vmfseagerzeroedthick', 'vmfspreallocated']);
const FIX = 'read this disk through VDDK or NBD (nbdkit vddk), which understand snapshot chains; HTTP datastore access reads flat disks only';

/** Why a disk cannot be read as one flat file over HTTP, or undefined when it can. */
export function checkDescriptor(fileName: string, d: VmdkDescriptor | undefined): UserError | undefined {
  if (/-(delta|sesparse)\.vmdk$/i.test(fileName)) {
    return new UserError('HTTP_DS_SPARSE', `${fileName} is a snapshot delta (sparse) extent, not a flat disk`, FIX);
  }
  if (/-ctk\.vmdk$/i.test(fileName)) return new UserError('HTTP_DS_SPARSE', `${fileName} is a change tracking file, not a disk`, 'give the disk descriptor (vm.vmdk) or its flat extent');
  if (!d) return undefined;
  if (!FLAT_TYPES.has(d.createType.toLowerCase())) {
    return new UserError('HTTP_DS_SPARSE', `${fileName} has createType "${d.createType}": a sparse, delta or raw-mapped disk`, FIX);
  }
  if ((d.parentCID && d.parentCID.toLowerCase() !== 'ffffffff') || d.parentFileNameHint) {
    return new UserError('HTTP_DS_SPARSE', `${fileName} is a delta disk with parent ${d.parentFileNameHint ?? d.parentCID}`, FIX);
  }
  if (d.extents.length !== 1 || !['VMFS', 'FLAT'].includes(d.extents[0]!.type) || d.extents[0]!.offset !== 0 || !d.extents[0]!.file) {
    return new UserError('HTTP_DS_SPARSE', `${fileName} does not have exactly one flat extent (${d.extents.map((e) => e.type).join(', ') || 'none'})`, FIX);
  }
  return undefined;
}
