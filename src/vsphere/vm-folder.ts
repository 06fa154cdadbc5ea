/**
 * Where a VM sits in the "VMs and Templates" tree: its VM-folder path inside its datacenter and
 * the vApp that holds it, from the parents the inventory pass already fetched (no round trip).
 *
 * - folder: the names of the folders below the datacenter's vm folder, '/'-joined ("Prod/Web");
 *   "" for a VM directly in the vm folder; null when vCenter did not say (parent unreadable, or a
 *   chain that leaves the view). Names keep vCenter's escapes (%2f, %25), so '/' only separates.
 * - vApp: a vApp member has `parent` unset and `parentVApp` set (ManagedEntity.parent,
 *   VirtualMachine.parentVApp); only a root vApp has `parentFolder`, a nested one `parentVApp`. Its
 *   folder is then the root vApp's folder, and vApp the vApp names outermost first ("shop/tier").
 */
import { moref, str } from './convert.ts';
import type { ObjectProps } from './methods.ts';

export interface Placed { name: string; parent?: { type: string; value: string } }
export interface VAppNode { name: string; parentFolder?: string; parentVApp?: string }

export interface Placement { folder: string | null; vApp: string | null; datacenterRef: string | null }

/** Folder and vApp facts of one inventory pass, keyed by managed object id. */
export class FolderTree {
  readonly folders = new Map<string, Placed>();
  readonly vapps = new Map<string, VAppNode>();

  add(o: ObjectProps): void {
    const p = o.props;
    if (o.obj.type === 'Folder') {
      const parent = moref(p['parent']);
      this.folders.set(o.obj.value, { name: str(p['name']) ?? o.obj.value, ...(parent ? { parent: { type: parent.type, value: parent.value } } : {}) });
    } else if (o.obj.type === 'VirtualApp') {
      const pf = moref(p['parentFolder'])?.value, pv = moref(p['parentVApp'])?.value;
      this.vapps.set(o.obj.value, { name: str(p['name']) ?? o.obj.value, ...(pf ? { parentFolder: pf } : {}), ...(pv ? { parentVApp: pv } : {}) });
    }
  }

  /** The path of a VM folder below its datacenter's vm folder, and that datacenter's ref. */
  folderPath(ref: string): { path: string; datacenterRef: string } | null {
    const parts: string[] = [];
    for (let r: string | undefined = ref, hops = 0; r && hops < 128; hops++) {
      const f = this.folders.get(r);
      if (!f?.parent) return null;
      if (f.parent.type === 'Datacenter') return { path: parts.join('/'), datacenterRef: f.parent.value };
      if (f.parent.type !== 'Folder') return null;
      parts.unshift(f.name);
      r = f.parent.value;
    }
    return null;
  }

  /** A VM's placement from its `parent` and `parentVApp` properties. */
  place(vmProps: Record<string, any>): Placement {
    const parent = moref(vmProps['parent']);
    if (parent?.type === 'Folder') {
      const f = this.folderPath(parent.value);
      return { folder: f?.path ?? null, vApp: null, datacenterRef: f?.datacenterRef ?? null };
    }
    const names: string[] = [];
    let folderRef: string | undefined;
    for (let r = moref(vmProps['parentVApp'])?.value, hops = 0; r && hops < 64; hops++) {
      const a = this.vapps.get(r);
      if (!a) break;
      names.unshift(a.name);
      if (a.parentFolder) { folderRef = a.parentFolder; break; }
      r = a.parentVApp;
    }
    if (!names.length) return { folder: null, vApp: null, datacenterRef: null };
    const f = folderRef ? this.folderPath(folderRef) : null;
    return { folder: f?.path ?? null, vApp: names.join('/'), datacenterRef: f?.datacenterRef ?? null };
  }
}

/** "Prod/Web" from "/Prod/Web/" or "Prod//Web": the form VmInfo.folder has ("" the vm folder itself). */
export function normalizeFolder(path: string): string {
  return path.split('/').filter(Boolean).join('/');
}

/** Whether a VM in `folder` is in `wanted` or below it ("Prod" holds "Prod" and "Prod/Web", not "Production"). */
export function inFolder(folder: string | null | undefined, wanted: string): boolean {
  const w = normalizeFolder(wanted);
  if (folder === null || folder === undefined) return false;
  return w === '' || folder === w || folder.startsWith(`${w}/`);
}
