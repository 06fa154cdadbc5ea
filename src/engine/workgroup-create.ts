/**
 * `workgroup create ID --vms a,b,c --template T`: the workgroup and a job per VM in one call, as
 * SMC's console creates a migration group from the servers picked. Everything that can be checked
 * before anything exists (name, description, template, settings, the VM list) is checked first; then
 * each VM that cannot become a job is listed with the reason and the others go on.
 */
import { UserError, errorReport } from '../util/errors.ts';
import { WORKGROUP_MAX_MEMBERS, type JobSettings, type WorkgroupRecord } from '../state/types.ts';
import { parseSettings, resolveSettings, type SettingsInput } from './settings.ts';
import type { JobEngine } from './jobs.ts';
import type { MemberResult, Workgroups } from './workgroups.ts';

export interface CreateDeps {
  engine: JobEngine;
  workgroups: Workgroups;
  resolveVm(nameOrRef: string): Promise<{ vmRef: string; name: string }>;
}

/** The job id of a VM: its name in lowercase with every other character a '-' ("Web 01" → "web-01"). */
export function jobIdForVm(name: string): string {
  return name.normalize('NFKC').toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/-+/g, '-').replace(/^-+/, '').slice(0, 64).replace(/-+$/, '');
}

export async function createWorkgroup(deps: CreateDeps, template: (name: string) => Partial<JobSettings>, b: Record<string, unknown>):
  Promise<{ workgroup: WorkgroupRecord; jobs: MemberResult[] }> {
  const vms = Array.isArray(b.vms) ? b.vms.map(String).map((v) => v.trim()).filter(Boolean) : [];
  if (new Set(vms).size !== vms.length) throw new UserError('BAD_VMS', `--vms names a VM twice (${vms.join(', ')})`, 'name each VM once');
  if (vms.length > WORKGROUP_MAX_MEMBERS) {
    throw new UserError('WORKGROUP_FULL', `--vms names ${vms.length} VMs; a workgroup holds at most ${WORKGROUP_MAX_MEMBERS}`, 'split the VMs over several workgroups');
  }
  if (b.template !== undefined && !vms.length) throw new UserError('BAD_VMS', '--template applies to the jobs --vms creates, and no VM was given', 'pass --vms a,b,c too, or leave --template out');
  const settings = resolveSettings(b.template ? template(String(b.template)) : undefined, parseSettings((b.settings ?? {}) as SettingsInput));
  const workgroup = deps.workgroups.create(String(b.id ?? ''), b.name === undefined ? undefined : String(b.name),
    b.description === undefined ? undefined : String(b.description));
  const jobs: MemberResult[] = [];
  for (const vmName of vms) {
    let jobId = jobIdForVm(vmName);
    try {
      const vm = await deps.resolveVm(vmName);
      jobId = jobIdForVm(vm.name) || jobIdForVm(vm.vmRef);
      deps.engine.createJob({ id: jobId, name: vm.name, vmRef: vm.vmRef, settings, start: b.start !== false });
      deps.engine.state.addToWorkgroup(workgroup.id, jobId);
      jobs.push({ jobId, ok: true, state: deps.engine.getJob(jobId).state });
    } catch (e) {
      const r = errorReport(e);
      jobs.push({ jobId: jobId || vmName, ok: false, reason: `${vmName}: ${r.message}`, code: r.code, ...(r.fix ? { fix: r.fix } : {}) });
    }
  }
  return { workgroup: deps.workgroups.get(workgroup.id), jobs };
}
