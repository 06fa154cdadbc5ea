/**
 * ReconfigVM_Task with a deviceChange of virtual disks, for tests (vmlift itself never changes a
 * VM's disks, so its methods layer has no such call): the request goes through the session's
 * own SOAP path (VimSession.callText), then the task is awaited with vmlift's waitForTask.
 */
import { soapBody } from '../../src/vsphere/lean-xml.ts';
import { moref, morOf } from '../../src/vsphere/convert.ts';
import { waitForTask, type VCenter } from '../../src/vsphere/index.ts';

export type DiskChange =
  | { op: 'add'; controllerKey: number; unitNumber: number; capacity: number }
  | { op: 'remove'; key: number }
  | { op: 'move'; key: number; controllerKey: number; unitNumber: number };

const xsi = (t: string) => ({ 'xsi:type': t });

function deviceSpec(c: DiskChange): Record<string, unknown> {
  if (c.op === 'add') {
    return {
      operation: 'add', fileOperation: 'create',
      device: { attributes: xsi('VirtualDisk'), key: -100 - c.unitNumber,
        backing: { attributes: xsi('VirtualDiskFlatVer2BackingInfo'), fileName: '', diskMode: 'persistent', thinProvisioned: true },
        controllerKey: c.controllerKey, unitNumber: c.unitNumber, capacityInKB: c.capacity / 1024, capacityInBytes: c.capacity },
    };
  }
  if (c.op === 'remove') return { operation: 'remove', device: { attributes: xsi('VirtualDisk'), key: c.key, capacityInKB: 0 } };
  return { operation: 'edit', device: { attributes: xsi('VirtualDisk'), key: c.key, controllerKey: c.controllerKey, unitNumber: c.unitNumber, capacityInKB: 0 } };
}

/** Applies the disk changes to VM `vmRef` in one ReconfigVM_Task and waits for it (VC_TASK_FAILED when refused). */
export async function reconfigDisks(vc: VCenter, vmRef: string, changes: DiskChange[]): Promise<void> {
  const xml = await vc.session.callText('ReconfigVM_Task', {
    _this: morOf({ type: 'VirtualMachine', value: vmRef }),
    spec: { attributes: xsi('VirtualMachineConfigSpec'), deviceChange: changes.map((c) => ({ attributes: xsi('VirtualDeviceConfigSpec'), ...deviceSpec(c) })) },
  });
  const task = moref(soapBody(xml)?.returnval);
  if (!task) throw new Error(`ReconfigVM_Task of ${vmRef} returned no task`);
  await waitForTask(vc.session, task, { what: `changing the disks of ${vmRef}`, timeoutMs: 30_000 });
}
