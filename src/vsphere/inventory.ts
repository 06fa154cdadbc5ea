/** Inventory through the PropertyCollector: a constant number of round trips whatever the VM count. */
import { UserError } from '../util/errors.ts';
import type { VimSession } from './session.ts';
import { arr, arrayOf, bool, moref, num, str, unescapeName, xsiType, type MoRef } from './convert.ts';
import { createContainerView, destroyView, objectsSpec, retrieveProperties, viewSpec, type ObjectProps } from './methods.ts';
import type { ControllerType, DiskInfo, HostInfo, SnapshotNode, VmInfo } from './types.ts';
import { systemVmKind } from './system-vms.ts';
import type { Prune } from './lean-xml.ts';
import { unreadableError } from './missing.ts';
import { FolderTree } from './vm-folder.ts';

export const VM_PATHS = [
  'name', 'runtime.powerState', 'runtime.host', 'runtime.consolidationNeeded', 'config.guestId', 'config.guestFullName',
  'config.version', 'config.uuid', 'config.changeTrackingEnabled', 'config.hardware.device', 'config.extraConfig', 'snapshot',
  'capability.changeTrackingSupported', 'config.hardware.numCPU', 'config.hardware.memoryMB', 'config.firmware',
];
const HOST_PATHS = ['name', 'config.product'];

const CONTROLLERS: Record<string, [ControllerType, string]> = {
  ParaVirtualSCSIController: ['pvscsi', 'scsi'], VirtualLsiLogicController: ['lsilogic', 'scsi'],
  VirtualLsiLogicSASController: ['lsilogic-sas', 'scsi'], VirtualBusLogicController: ['buslogic', 'scsi'],
  VirtualSCSIController: ['scsi', 'scsi'], VirtualIDEController: ['ide', 'ide'], VirtualAHCIController: ['sata', 'sata'],
  VirtualSATAController: ['sata', 'sata'], VirtualNVMEController: ['nvme', 'nvme'],
};

/** Of a VM's devices, only disks and the controllers they hang on are read; the others are skipped unparsed. */
export const DISK_DEVICES: Prune = {
  element: 'VirtualDevice',
  keep: (attrs) => {
    const t = attrs ? xsiType({ attributes: attrs }) : undefined;
    return t === undefined || t === 'VirtualDisk' || t in CONTROLLERS;
  },
};

export function parseExtraConfig(val: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const o of arrayOf(val)) {
    const k = str((o as any).key);
    if (k !== undefined) out[k] = str((o as any).value) ?? '';
  }
  return out;
}

/** Disks of a device list (VM config or snapshot config), with their controller facts. */
export function parseDisks(devicesVal: unknown, extra: Record<string, string>): DiskInfo[] {
  const devices = arrayOf(devicesVal);
  const ctrls = new Map<number, { type: ControllerType; prefix: string; bus: number }>();
  for (const d of devices) {
    const c = CONTROLLERS[xsiType(d) ?? ''];
    if (c) ctrls.set(num((d as any).key)!, { type: c[0], prefix: c[1], bus: num((d as any).busNumber) ?? 0 });
  }
  const disks: DiskInfo[] = [];
  for (const d of devices as any[]) {
    if (xsiType(d) !== 'VirtualDisk') continue;
    const ctrl = ctrls.get(num(d.controllerKey) ?? -1);
    const unit = num(d.unitNumber) ?? 0;
    const busId = ctrl ? `${ctrl.prefix}${ctrl.bus}:${unit}` : `unknown${num(d.controllerKey)}:${unit}`;
    const b = d.backing ?? {};
    const capacity = num(d.capacityInBytes) ?? (num(d.capacityInKB) ?? 0) * 1024;
    const ds = moref(b.datastore);
    disks.push({
      key: num(d.key)!, label: str(d.deviceInfo?.label) ?? `disk ${num(d.key)}`,
      controllerType: ctrl?.type ?? 'unknown', controllerBus: ctrl?.bus ?? -1, unitNumber: unit, busId,
      capacity, backingType: (xsiType(b) ?? 'unknown').replace(/BackingInfo$/, ''),
      file: str(b.fileName) ?? '', datastore: ds ? ds.value : null,
      diskMode: str(b.diskMode) ?? 'persistent', compatibilityMode: str(b.compatibilityMode) ?? null,
      changeId: str(b.changeId) || null,
      uuid: str(b.uuid) || null,
      ctkEnabled: (extra[`${busId}.ctkEnabled`] ?? '').toUpperCase() === 'TRUE',
      ...backingFacts(b),
    });
  }
  return disks.sort((a, b) => a.key - b.key);
}

/** How a backing stores its data: delta format, parent chain, the object behind it (DiskInfo's optional facts). */
function backingFacts(b: any): Partial<DiskInfo> {
  const out: Partial<DiskInfo> = {};
  const fmt = str(b.deltaDiskFormat);
  if (fmt) out.deltaDiskFormat = fmt;
  const variant = str(b.deltaDiskFormatVariant);
  if (variant) out.deltaDiskFormatVariant = variant;
  const parents: string[] = [];
  for (let p = b.parent; p && typeof p === 'object' && parents.length < 256; p = p.parent) parents.push(str(p.fileName) ?? '');
  if (parents.length) out.parents = parents;
  const obj = str(b.backingObjectId);
  if (obj) out.backingObjectId = obj;
  const ds = moref(b.datastore);
  if (ds) out.datastoreRef = ds.value;
  return out;
}

function parseTree(nodes: unknown): SnapshotNode[] {
  return arr(nodes).map((n: any) => ({
    ref: moref(n.snapshot)?.value ?? '', name: unescapeName(str(n.name) ?? ''), description: str(n.description) ?? '',
    createTime: str(n.createTime) ?? '', state: str(n.state) ?? '', quiesced: bool(n.quiesced) ?? false,
    children: parseTree(n.childSnapshotList),
  }));
}

export function parseVm(o: ObjectProps, hosts: Map<string, HostInfo>, dcOfDatastore: Map<string, string>): VmInfo {
  const p = o.props;
  const extra = parseExtraConfig(p['config.extraConfig']);
  const disks = parseDisks(p['config.hardware.device'], extra);
  const hostRef = moref(p['runtime.host'])?.value;
  const snap = p['snapshot'];
  const ctkConfig: Record<string, string> = {};
  for (const [k, v] of Object.entries(extra)) if (/ctkEnabled$/i.test(k)) ctkConfig[k] = v;
  const dsOfFirst = disks.find((d) => d.datastore)?.datastore;
  const name = str(p['name']) ?? o.obj.value;
  return {
    ref: o.obj.value, name, systemVm: systemVmKind(name), unreadable: o.missing, powerState: str(p['runtime.powerState']) ?? 'unknown',
    guestId: str(p['config.guestId']) ?? '', guestFullName: str(p['config.guestFullName']) ?? '',
    hardwareVersion: str(p['config.version']) ?? '', uuid: str(p['config.uuid']) ?? '',
    host: hostRef ? hosts.get(hostRef) ?? { ref: hostRef, name: hostRef, version: '', build: '' } : null,
    datacenter: dsOfFirst ? dcOfDatastore.get(dsOfFirst) ?? null : null,
    changeTrackingEnabled: bool(p['config.changeTrackingEnabled']) ?? false,
    ctkEnabled: (extra['ctkEnabled'] ?? '').toUpperCase() === 'TRUE',
    consolidationNeeded: bool(p['runtime.consolidationNeeded']) ?? false,
    changeTrackingSupported: bool(p['capability.changeTrackingSupported']) ?? null,
    snapshots: parseTree(snap?.rootSnapshotList), currentSnapshot: moref(snap?.currentSnapshot)?.value ?? null,
    disks, ctkConfig,
    numCpu: num(p['config.hardware.numCPU']) ?? null, memoryMB: num(p['config.hardware.memoryMB']) ?? null,
    firmware: str(p['config.firmware']) ?? null,
  };
}

export interface Inventory {
  vms: VmInfo[];
  hosts: HostInfo[];
  datastores: { ref: string; name: string; datacenter: string | null }[];
  datacenters: string[];
}

function parseHost(o: ObjectProps): HostInfo {
  const prod = o.props['config.product'] ?? {};
  return { ref: o.obj.value, name: str(o.props['name']) ?? o.obj.value, version: str(prod.version) ?? '', build: str(prod.build) ?? '' };
}

/** localeCompare's order, without its per-call cost (a thousand names sort in ten thousand compares). */
const byName = new Intl.Collator();

export const INVENTORY_TYPES = ['VirtualMachine', 'HostSystem', 'Datastore', 'Datacenter', 'Folder', 'VirtualApp'];

/** What the inventory reads of every VM besides vmPaths: where it sits (vm-folder.ts). */
const PLACEMENT_PATHS = ['parent', 'parentVApp'];

/** The one filter spec of the inventory, over a ContainerView of INVENTORY_TYPES. */
export function inventorySpec(view: MoRef, vmPaths: string[] = VM_PATHS): Record<string, unknown> {
  return viewSpec(view, [
    { type: 'VirtualMachine', pathSet: [...new Set([...vmPaths, ...PLACEMENT_PATHS])] },
    { type: 'HostSystem', pathSet: HOST_PATHS },
    { type: 'Datastore', pathSet: ['name'] },
    { type: 'Datacenter', pathSet: ['name', 'datastore', 'parent'] },
    { type: 'Folder', pathSet: ['name', 'parent'] },
    { type: 'VirtualApp', pathSet: ['name', 'parentFolder', 'parentVApp'] },
  ]);
}

/**
 * A datacenter's inventory path ("F0/DC0"): its name under the folders above it, up to the root
 * folder (which a view of the root does not list). It is the dcPath of /folder URLs, as govmomi's
 * FindInventoryPath gives it; names keep vCenter's escapes (%2f), so '/' only separates.
 */
function inventoryPath(name: string, parent: string | undefined, folders: Map<string, { name: string; parent: string | undefined }>): string {
  const parts = [name];
  for (let p = parent, hops = 0; p && folders.has(p) && hops < 64; hops++) {
    const f = folders.get(p)!;
    parts.unshift(f.name);
    p = f.parent;
  }
  return parts.join('/');
}

/**
 * The whole inventory in three round trips: CreateContainerView, RetrievePropertiesEx
 * (+ one ContinueRetrievePropertiesEx per further page when vCenter pages the answer, which it
 * may do without maxObjects), DestroyView. Datacenters are named by their inventory path.
 * `only` narrows the VMs to these refs (the objects are still found through the view).
 */
export async function fetchInventory(s: VimSession, o: { vmPaths?: string[] } = {}): Promise<Inventory> {
  const view = await createContainerView(s, INVENTORY_TYPES);
  let objs: ObjectProps[];
  try {
    objs = await retrieveProperties(s, [inventorySpec(view, o.vmPaths)], { prune: DISK_DEVICES });
  } finally {
    await destroyView(s, view).catch(() => {});
  }
  const hosts = new Map<string, HostInfo>();
  const dsNames = new Map<string, string>();
  const dcOfDs = new Map<string, string>();
  const datacenters: string[] = [];
  const folders = new Map<string, { name: string; parent: string | undefined }>();
  const tree = new FolderTree();
  const dcNames = new Map<string, string>();
  for (const x of objs) {
    if (x.obj.type === 'Folder') folders.set(x.obj.value, { name: str(x.props['name']) ?? x.obj.value, parent: moref(x.props['parent'])?.value });
    tree.add(x);
  }
  for (const x of objs) {
    if (x.obj.type === 'HostSystem') hosts.set(x.obj.value, parseHost(x));
    if (x.obj.type === 'Datastore') dsNames.set(x.obj.value, str(x.props['name']) ?? x.obj.value);
    if (x.obj.type === 'Datacenter') {
      const name = inventoryPath(str(x.props['name']) ?? x.obj.value, moref(x.props['parent'])?.value, folders);
      datacenters.push(name);
      dcNames.set(x.obj.value, name);
      for (const d of arrayOf(x.props['datastore'])) { const r = moref(d); if (r) dcOfDs.set(r.value, name); }
    }
  }
  const vms = objs.filter((x) => x.obj.type === 'VirtualMachine').map((x) => {
    const vm = parseVm(x, hosts, dcOfDs);
    const at = tree.place(x.props);
    vm.folder = at.folder;
    vm.vApp = at.vApp;
    if (at.datacenterRef) vm.datacenter ??= dcNames.get(at.datacenterRef) ?? null;
    return vm;
  });
  for (const vm of vms) for (const d of vm.disks) if (d.datastore) d.datastore = dsNames.get(d.datastore) ?? d.datastore;
  vms.sort((a, b) => byName.compare(a.name, b.name));
  return {
    vms, hosts: [...hosts.values()], datacenters,
    datastores: [...dsNames].map(([ref, name]) => ({ ref, name, datacenter: dcOfDs.get(ref) ?? null })),
  };
}

/** One VM by name or managed object id (vm-42), with everything VmInfo holds. */
export async function fetchVm(s: VimSession, nameOrRef: string): Promise<VmInfo> {
  const inv = await fetchInventory(s, { vmPaths: ['name'] });
  const hit = inv.vms.filter((v) => v.name === nameOrRef || v.ref === nameOrRef);
  if (hit.length === 0) {
    throw new UserError('VC_VM_NOT_FOUND', `the ${s.serverLabel} has no virtual machine named "${nameOrRef}"`,
      'check the name with `vmlift vc ls` (names are case-sensitive), or give the managed object id (vm-42)');
  }
  if (hit.length > 1) {
    throw new UserError('VC_VM_AMBIGUOUS', `${hit.length} virtual machines are named "${nameOrRef}" (${hit.map((v) => v.ref).join(', ')})`,
      'give the managed object id (vm-42) instead of the name');
  }
  return fetchVmByRef(s, hit[0]!.ref, inv);
}

export async function fetchVmByRef(s: VimSession, ref: string, inv?: Inventory): Promise<VmInfo> {
  const [o] = await retrieveProperties(s, [objectsSpec([{ type: 'VirtualMachine', value: ref }], [{ type: 'VirtualMachine', pathSet: VM_PATHS }])]);
  if (!o) throw new UserError('VC_VM_NOT_FOUND', `virtual machine ${ref} no longer exists in the ${s.serverLabel}`, 'check the VM with `vmlift vc ls`');
  const hostRef = moref(o.props['runtime.host']);
  const hosts = new Map<string, HostInfo>();
  if (hostRef) {
    const [h] = await retrieveProperties(s, [objectsSpec([hostRef], [{ type: 'HostSystem', pathSet: HOST_PATHS }])]);
    if (h) hosts.set(hostRef.value, parseHost(h));
  }
  const vm = parseVm(o, hosts, new Map());
  if (inv) {
    const seen = inv.vms.find((v) => v.ref === ref);
    if (seen) { vm.folder = seen.folder ?? null; vm.vApp = seen.vApp ?? null; }
    const dsNames = new Map(inv.datastores.map((d) => [d.ref, d]));
    for (const d of vm.disks) {
      const ds = d.datastore ? dsNames.get(d.datastore) : undefined;
      if (ds) { d.datastore = ds.name; vm.datacenter ??= ds.datacenter; }
    }
  }
  return vm;
}

/** The disks as the snapshot's own config shows them (with the snapshot's changeIds). */
export async function fetchSnapshotDisks(s: VimSession, snapshot: MoRef): Promise<DiskInfo[]> {
  const [o] = await retrieveProperties(s, [objectsSpec([snapshot], [{ type: 'VirtualMachineSnapshot', pathSet: ['config.hardware.device', 'config.extraConfig', 'vm'] }])]);
  if (!o) throw new UserError('VC_SNAPSHOT_NOT_FOUND', `snapshot ${snapshot.value} does not exist`, 'list the snapshots with `vmlift vc snapshots VM`');
  // Without its config a snapshot has no disks to read: that is an error, not "0 disks".
  const missing = o.missing.filter((m) => m.path === 'config' || m.path.startsWith('config.'));
  if (missing.length) {
    const vmRef = moref(o.props['vm']);
    const vm = vmRef ? (await retrieveProperties(s, [objectsSpec([vmRef], [{ type: 'VirtualMachine', pathSet: ['name'] }])]))[0] : undefined;
    const vmName = str(vm?.props['name']) ?? vmRef?.value ?? 'the VM';
    throw unreadableError(`snapshot ${snapshot.value} of ${vmName}`, vmName, missing);
  }
  const disks = parseDisks(o.props['config.hardware.device'], parseExtraConfig(o.props['config.extraConfig']));
  // The datastores' names and types (VMFS, NFS, vsan, VVOL): one more round trip, whatever the disk count.
  const refs = [...new Set(disks.map((d) => d.datastoreRef).filter((r): r is string => !!r))];
  if (refs.length) {
    const dss = await retrieveProperties(s, [objectsSpec(refs.map((value) => ({ type: 'Datastore', value })), [{ type: 'Datastore', pathSet: ['name', 'summary.type'] }])]);
    const byRef = new Map(dss.map((x) => [x.obj.value, x.props]));
    for (const d of disks) {
      const p = d.datastoreRef ? byRef.get(d.datastoreRef) : undefined;
      if (!p) continue;
      d.datastore = str(p['name']) ?? d.datastore;
      const type = str(p['summary.type']);
      if (type) d.datastoreType = type;
    }
  }
  return disks;
}
