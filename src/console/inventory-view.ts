/**
 * GET /v1/inventory: vCenter's VMs as the connector sees them, with what a user filters on (host,
 * datastores, VM folder, power and CBT state) and each VM's preflight result inline (the checks `job create`
 * and every cycle run). One inventory pass: constant round trips whatever the number of VMs.
 */
import { preflight, type Inventory } from '../vsphere/index.ts';
import type { VmInfo } from '../vsphere/types.ts';

export interface InventoryVm {
  ref: string; name: string; powerState: string; guestId: string; host: string | null; datacenter: string | null;
  /** VM-folder path inside the datacenter ("Prod/Web", "" the vm folder itself, null unknown) and the vApp, as VmInfo has them. */
  folder: string | null; vApp: string | null;
  datastores: string[]; cbt: 'on' | 'off' | 'partial'; disks: { key: number; label: string; capacity: number }[];
  systemVm: string | null; preflight: { ok: boolean; failed: { name: string; message: string; fix?: string }[] };
}

function cbtState(vm: VmInfo): InventoryVm['cbt'] {
  if (!vm.changeTrackingEnabled) return 'off';
  return vm.ctkEnabled && vm.disks.every((d) => d.ctkEnabled) ? 'on' : 'partial';
}

export function inventoryView(inv: Inventory): InventoryVm[] {
  return inv.vms.map((vm) => {
    const p = preflight(vm);
    return {
      ref: vm.ref, name: vm.name, powerState: vm.powerState, guestId: vm.guestId, host: vm.host?.name ?? null, datacenter: vm.datacenter,
      folder: vm.folder ?? null, vApp: vm.vApp ?? null,
      datastores: [...new Set(vm.disks.map((d) => d.datastore ?? /^\[([^\]]+)\]/.exec(d.file)?.[1]).filter((x): x is string => !!x))],
      cbt: cbtState(vm), disks: vm.disks.map((d) => ({ key: d.key, label: d.label, capacity: d.capacity })), systemVm: vm.systemVm,
      preflight: { ok: p.ok, failed: p.checks.filter((c) => !c.ok).map((c) => ({ name: c.name, message: c.message, ...(c.fix ? { fix: c.fix } : {}) })) },
    };
  });
}
