/** Words for properties vCenter did not return (missingSet): what is missing, why, and the fix. */
import { UserError } from '../util/errors.ts';
import type { MissingProperty } from './methods.ts';

/** "config.hardware.device, config.extraConfig (NoPermission: privilege System.Read)": paths grouped by their reason. */
export function describeMissing(missing: MissingProperty[]): string {
  const groups = new Map<string, string[]>();
  for (const m of missing) {
    const why = `${m.fault}${m.privilege ? `: privilege ${m.privilege}` : ''}`;
    groups.set(why, [...(groups.get(why) ?? []), m.path]);
  }
  return [...groups].map(([why, paths]) => `${paths.join(', ')} (${why})`).join('; ');
}

export function missingFix(missing: MissingProperty[], vmName: string): string {
  return missing.some((m) => m.fault === 'NoPermission')
    ? `grant the vmlift user ${[...new Set(missing.map((m) => m.privilege).filter(Boolean))].join(', ') || 'read access'} on ${vmName} (at least the Read-only role on the VM, its folder, host and datastores), then run \`vmlift vc preflight ${vmName}\` again`
    : `check that vCenter can reach ${vmName}'s files and host (vSphere Client: the VM's Summary), then run \`vmlift vc preflight ${vmName}\` again`;
}

/** VC_UNREADABLE: `what` (a VM, a snapshot) came back without properties vmlift needs. */
export function unreadableError(what: string, vmName: string, missing: MissingProperty[]): UserError {
  return new UserError('VC_UNREADABLE', `vCenter did not return ${describeMissing(missing)} of ${what}, so its disks are unknown`, missingFix(missing, vmName));
}
