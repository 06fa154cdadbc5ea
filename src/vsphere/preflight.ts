/** Preflight of docs/design.md: can vmlift enable CBT and snapshot this VM? Each check says why and how to fix it. */
import type { VmInfo, SnapshotNode } from './types.ts';
import { describeMissing, missingFix } from './missing.ts';

export interface PreflightCheck { name: string; ok: boolean; message: string; fix?: string }
export interface PreflightReport { vm: string; ref: string; ok: boolean; checks: PreflightCheck[] }

function flatten(nodes: SnapshotNode[]): SnapshotNode[] {
  return nodes.flatMap((n) => [n, ...flatten(n.children)]);
}

function versionAtLeast(v: string, major: number, minor = 0): boolean {
  const m = /^(\d+)(?:\.(\d+))?/.exec(v);
  if (!m) return true; // unknown: do not refuse on missing data
  const a = Number(m[1]), b = Number(m[2] ?? 0);
  return a > major || (a === major && b >= minor);
}

export function preflight(vm: VmInfo, o: { snapshotPrefix?: string } = {}): PreflightReport {
  const prefix = o.snapshotPrefix ?? 'vmlift-';
  const checks: PreflightCheck[] = [];
  const unreadable = vm.unreadable ?? [];
  checks.push(unreadable.length === 0
    ? { name: 'readable', ok: true, message: 'vCenter returned every property vmlift reads' }
    : { name: 'readable', ok: false,
        message: `vCenter did not return ${describeMissing(unreadable)} for ${vm.name}, so its disks and settings are unknown`,
        fix: missingFix(unreadable, vm.name) });
  const snaps = flatten(vm.snapshots);
  const foreign = snaps.filter((s) => !s.name.startsWith(prefix));
  const ours = snaps.filter((s) => s.name.startsWith(prefix));
  checks.push(foreign.length === 0
    ? { name: 'snapshots', ok: true, message: ours.length ? `only vmlift leftovers (${ours.length}), swept before each cycle` : 'no snapshots' }
    : { name: 'snapshots', ok: false, message: `the VM has ${foreign.length} snapshot(s): ${foreign.map((s) => `"${s.name}"`).join(', ')}`,
        fix: `delete them (vSphere Client: Snapshots → Delete All), then run \`vmlift vc preflight ${vm.name}\` again; CBT cannot be enabled reliably under existing snapshots` });

  checks.push(vm.changeTrackingSupported !== false
    ? { name: 'cbt-supported', ok: true, message: vm.changeTrackingSupported ? 'the VM supports changed block tracking' : 'vCenter does not say whether the VM supports changed block tracking' }
    : { name: 'cbt-supported', ok: false, message: `vCenter reports that ${vm.name} does not support changed block tracking (capability.changeTrackingSupported is false)`,
        fix: `check the VM's compatibility (vmx-07 or later), its host's ESXi version and license, and that its disks are not independent or physical RDMs; then run \`vmlift vc preflight ${vm.name}\` again` });

  const hw = /^vmx-(\d+)$/.exec(vm.hardwareVersion);
  const hwN = hw ? Number(hw[1]) : NaN;
  checks.push(!hw || hwN >= 7
    ? { name: 'hardware-version', ok: true, message: `hardware version ${vm.hardwareVersion || 'unknown'}` }
    : { name: 'hardware-version', ok: false, message: `hardware version ${vm.hardwareVersion} is below vmx-07, the first with changed block tracking`,
        fix: `power off ${vm.name} and upgrade its compatibility (vSphere Client: Actions → Compatibility → Upgrade VM Compatibility) to vmx-07 or later` });

  const esx = vm.host?.version ?? '';
  checks.push(versionAtLeast(esx, 4, 0)
    ? { name: 'esxi-version', ok: true, message: vm.host ? `host ${vm.host.name} runs ESXi ${esx || 'unknown'}` : 'host unknown' }
    : { name: 'esxi-version', ok: false, message: `host ${vm.host!.name} runs ESXi ${esx}, below 4.0 (no changed block tracking)`,
        fix: `migrate ${vm.name} to a host running ESXi 4.0 or later, or upgrade the host` });

  const indep = vm.disks.filter((d) => d.diskMode.startsWith('independent'));
  checks.push(indep.length === 0
    ? { name: 'independent-disks', ok: true, message: 'no independent disks' }
    : { name: 'independent-disks', ok: false,
        message: `${indep.map((d) => `${d.label} (${d.busId}) is ${d.diskMode}`).join('; ')}: snapshots skip independent disks, so CBT cannot capture them`,
        fix: `power off ${vm.name} and set ${indep.length > 1 ? 'these disks' : 'the disk'} to Dependent mode (Edit Settings → Hard disk → Disk Mode)` });

  const prdm = vm.disks.filter((d) => d.compatibilityMode === 'physicalMode');
  checks.push(prdm.length === 0
    ? { name: 'physical-rdm', ok: true, message: 'no physical-compatibility RDMs' }
    : { name: 'physical-rdm', ok: false, message: `${prdm.map((d) => `${d.label} (${d.busId})`).join(', ')}: physical-compatibility RDM (no snapshots, no CBT)`,
        fix: 'switch the RDM to virtual compatibility mode (remove and re-add it as virtual RDM), or migrate that LUN by other means' });

  checks.push(!vm.consolidationNeeded
    ? { name: 'consolidation', ok: true, message: 'disks consolidated' }
    : { name: 'consolidation', ok: false, message: 'vCenter reports that the VM disks need consolidation',
        fix: `consolidate (vSphere Client: Snapshots → Consolidate, or \`vmlift vc snapshots ${vm.name} --sweep\`)` });

  return { vm: vm.name, ref: vm.ref, ok: checks.every((c) => c.ok), checks };
}
