/**
 * VMs that vSphere runs for itself and that are no migration candidates. vCenter 7.0U1 and later
 * list the vSphere Cluster Services agents (`vCLS (1)` in 7.0U1–U2, `vCLS-<uuid>` from 7.0U3) among
 * the VirtualMachines; vCenter deploys and deletes them itself.
 */
const SYSTEM_VM_NAMES: readonly [RegExp, string][] = [
  [/^vCLS(-[0-9a-f-]+| \(\d+\))$/i, 'a vSphere Cluster Services (vCLS) agent VM'],
];

/** What kind of system VM `name` is, or null for an ordinary VM. */
export function systemVmKind(name: string): string | null {
  for (const [re, kind] of SYSTEM_VM_NAMES) if (re.test(name)) return kind;
  return null;
}
