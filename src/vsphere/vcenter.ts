/** Object helpers: what the CLI and the engine call. One VCenter = one logged-in session. */
import { UserError } from '../util/errors.ts';
import { VimSession, type ConnectOptions } from './session.ts';
import { fetchInventory, fetchSnapshotDisks, fetchVm, fetchVmByRef, type Inventory } from './inventory.ts';
import { preflight, type PreflightReport } from './preflight.ts';
import { consolidateVMDisksTask, createSnapshotTask, reconfigVM, removeSnapshotTask } from './methods.ts';
import { waitForTask, type TaskWaitOptions } from './tasks.ts';
import { changedAreas, type ChangedAreas } from './changes.ts';
import { isFault } from './errors.ts';
import { flatExtentUrl } from '../util/datastore-url.ts';
import type { DiskInfo, SnapshotHandle, SnapshotNode, VmInfo } from './types.ts';

export interface CbtResult { vm: string; changed: boolean; stunned: boolean; settings: Record<string, string>; changeTrackingEnabled: boolean }

const vmRef = (ref: string) => ({ type: 'VirtualMachine' as const, value: ref });
const snapRef = (ref: string) => ({ type: 'VirtualMachineSnapshot' as const, value: ref });

function flatten(nodes: SnapshotNode[]): SnapshotNode[] {
  return nodes.flatMap((n) => [n, ...flatten(n.children)]);
}

export class VCenter {
  private constructor(readonly session: VimSession) {}

  static async connect(o: ConnectOptions): Promise<VCenter> {
    return new VCenter(await VimSession.connect(o));
  }

  get roundTrips(): number { return this.session.stats.roundTrips; }

  inventory(): Promise<Inventory> { return fetchInventory(this.session); }
  /**
   * A VM by name or managed object id (vm-42 on vCenter, 42 on an ESXi host). Something shaped like an
   * id that is no object of the server's may still be a VM's name; any other failure (permissions,
   * session, network) is the answer.
   */
  async vm(nameOrRef: string): Promise<VmInfo> {
    const vm = await this.findVm(nameOrRef);
    // hostd has one datacenter, always named ha-datacenter
    if (this.session.isHostAgent) vm.datacenter ??= 'ha-datacenter';
    return vm;
  }

  private async findVm(nameOrRef: string): Promise<VmInfo> {
    const idShape = this.session.isHostAgent ? /^\d+$/ : /^vm-\d+$/;
    if (!idShape.test(nameOrRef)) return fetchVm(this.session, nameOrRef);
    try {
      return await fetchVmByRef(this.session, nameOrRef);
    } catch (e) {
      const notFound = isFault(e, 'ManagedObjectNotFound') || (e instanceof UserError && e.code === 'VC_VM_NOT_FOUND');
      if (!notFound) throw e;
      return fetchVm(this.session, nameOrRef);
    }
  }

  async preflight(nameOrRef: string): Promise<PreflightReport> {
    return preflight(await this.vm(nameOrRef));
  }

  private cbtSettings(vm: VmInfo, on: boolean): Record<string, string> {
    const v = on ? 'TRUE' : 'FALSE';
    const s: Record<string, string> = { ctkEnabled: v };
    for (const d of vm.disks) s[`${d.busId}.ctkEnabled`] = v;
    return s;
  }

  /**
   * Enables (or disables) changed block tracking: changeTrackingEnabled plus extraConfig
   * ctkEnabled and <bus>.ctkEnabled for every disk, then a stun/unstun (snapshot create +
   * remove) when the VM runs, then a read-back. Does nothing when everything is already set.
   */
  async setCbt(nameOrRef: string, on: boolean, o: TaskWaitOptions = {}): Promise<CbtResult> {
    let vm = await this.vm(nameOrRef);
    const want = this.cbtSettings(vm, on);
    const missing = Object.entries(want).filter(([k, v]) => (vm.ctkConfig[k] ?? '').toUpperCase() !== v);
    // Already as wanted: nothing to do, even under a backup product's snapshot (preflight would refuse to enable CBT there).
    if (vm.changeTrackingEnabled === on && missing.length === 0) {
      return { vm: vm.name, changed: false, stunned: false, settings: want, changeTrackingEnabled: on };
    }
    if (on) {
      const report = preflight(vm);
      if (!report.ok) {
        const bad = report.checks.filter((c) => !c.ok);
        throw new UserError('VC_PREFLIGHT', `cannot enable CBT on ${vm.name}: ${bad.map((c) => c.message).join('; ')}`, bad.map((c) => c.fix).join('; '));
      }
    }
    const task = await reconfigVM(this.session, vmRef(vm.ref), { changeTrackingEnabled: on, extraConfig: missing.map(([key, value]) => ({ key, value })) });
    await waitForTask(this.session, task, { ...o, what: `${on ? 'enabling' : 'disabling'} CBT on ${vm.name}` });
    let stunned = false;
    if (vm.powerState === 'poweredOn') {
      // CBT changes take effect at the next stun/unstun of a running VM.
      const snap = await this.createSnapshot(vm.ref, `vmlift-cbt-${Date.now()}`, { quiesce: false, description: 'vmlift: stun/unstun to apply CBT settings' }, o);
      await this.removeSnapshot(vm.ref, snap.ref, o);
      stunned = true;
    }
    vm = await fetchVmByRef(this.session, vm.ref);
    const wrong = Object.entries(want).filter(([k, v]) => (vm.ctkConfig[k] ?? '').toUpperCase() !== v);
    if (vm.changeTrackingEnabled !== on || wrong.length) {
      throw new UserError('VC_CBT_VERIFY', `vCenter accepted the reconfiguration of ${vm.name} but the read-back differs: changeTrackingEnabled=${vm.changeTrackingEnabled}` +
        (wrong.length ? `, ${wrong.map(([k]) => `${k}=${vm.ctkConfig[k] ?? 'unset'}`).join(', ')}` : ''),
        'check the VM\'s Configuration Parameters in the vSphere Client; another tool may be changing them');
    }
    return { vm: vm.name, changed: true, stunned, settings: want, changeTrackingEnabled: on };
  }

  enableCbt(nameOrRef: string, o?: TaskWaitOptions): Promise<CbtResult> { return this.setCbt(nameOrRef, true, o); }
  disableCbt(nameOrRef: string, o?: TaskWaitOptions): Promise<CbtResult> { return this.setCbt(nameOrRef, false, o); }

  /** CreateSnapshot_Task(memory=false, quiesce) and wait; returns the new snapshot. */
  async createSnapshot(ref: string, name: string, o: { quiesce: boolean; description?: string }, w: TaskWaitOptions = {}): Promise<SnapshotHandle> {
    const task = await createSnapshotTask(this.session, vmRef(ref), name, { memory: false, quiesce: o.quiesce, description: o.description });
    const r = await waitForTask(this.session, task, { ...w, what: w.what ?? `creating snapshot ${name} of ${ref}` });
    if (!r.resultRef) throw new Error(`CreateSnapshot_Task of ${ref} returned no snapshot`);
    return { ref: r.resultRef.value, name };
  }

  /** RemoveSnapshot_Task(removeChildren=false, consolidate=true); consolidates when vCenter then asks for it. */
  async removeSnapshot(ref: string, snapshot: string, w: TaskWaitOptions = {}): Promise<{ consolidated: boolean }> {
    const task = await removeSnapshotTask(this.session, snapRef(snapshot), { removeChildren: false, consolidate: true });
    await waitForTask(this.session, task, { ...w, what: w.what ?? `removing snapshot ${snapshot} of ${ref}` });
    return this.consolidateIfNeeded(ref, w);
  }

  async consolidateIfNeeded(ref: string, w: TaskWaitOptions = {}): Promise<{ consolidated: boolean }> {
    const vm = await fetchVmByRef(this.session, ref);
    if (!vm.consolidationNeeded) return { consolidated: false };
    const task = await consolidateVMDisksTask(this.session, vmRef(ref));
    await waitForTask(this.session, task, { ...w, what: `consolidating the disks of ${vm.name}` });
    return { consolidated: true };
  }

  /** The snapshot of the VM named `name` (the first in tree order), or null. */
  async findSnapshot(nameOrRef: string, name: string): Promise<SnapshotNode | null> {
    return flatten((await this.vm(nameOrRef)).snapshots).find((s) => s.name === name) ?? null;
  }

  async snapshots(nameOrRef: string): Promise<{ vm: VmInfo; snapshots: SnapshotNode[] }> {
    const vm = await this.vm(nameOrRef);
    return { vm, snapshots: vm.snapshots };
  }

  /** Removes leftover snapshots whose names start with `prefix` (deepest first), then consolidates if needed. */
  async sweepSnapshots(nameOrRef: string, prefix = 'vmlift-', w: TaskWaitOptions & { keep?: string } = {}): Promise<{ removed: string[]; consolidated: boolean }> {
    if (!prefix) throw new UserError('VC_SWEEP_PREFIX', 'refusing to sweep snapshots with an empty name prefix', 'give a prefix such as vmlift-');
    const vm = await this.vm(nameOrRef);
    const ours = flatten(vm.snapshots).filter((s) => s.name.startsWith(prefix) && s.name !== w.keep).reverse();
    const removed: string[] = [];
    for (const s of ours) {
      const task = await removeSnapshotTask(this.session, snapRef(s.ref), { removeChildren: false, consolidate: true });
      await waitForTask(this.session, task, { ...w, what: `removing leftover snapshot ${s.name} of ${vm.name}` });
      removed.push(s.name);
    }
    const c = await this.consolidateIfNeeded(vm.ref, w);
    return { removed, consolidated: c.consolidated };
  }

  /** The disks of a snapshot with their changeIds (docs/design.md step 3). */
  snapshotDisks(snapshot: string): Promise<DiskInfo[]> {
    return fetchSnapshotDisks(this.session, snapRef(snapshot));
  }

  /** docs/design.md step 4: every changed area of a disk since `changeId` ("*": allocated areas) as of the snapshot. */
  async changedAreas(ref: string, snapshot: string, deviceKey: number, changeId: string, capacity?: number): Promise<ChangedAreas> {
    let cap = capacity;
    if (cap === undefined) {
      const d = (await this.snapshotDisks(snapshot)).find((x) => x.key === deviceKey);
      if (!d) throw new UserError('VC_DISK_NOT_FOUND', `snapshot ${snapshot} has no disk with key ${deviceKey}`, 'list the disks with `vmlift vc show VM`');
      cap = d.capacity;
    }
    return changedAreas(this.session, vmRef(ref), snapRef(snapshot), deviceKey, cap, changeId);
  }

  /** URL of a disk's flat file on its datastore, and the cookie to send with Range GETs. */
  diskUrl(disk: Pick<DiskInfo, 'file'>, datacenter: string): { url: string; cookie: string | undefined } {
    return { url: flatExtentUrl(this.session.url, datacenter, disk.file), cookie: this.session.cookie };
  }

  close(): Promise<void> { return this.session.close(); }
}
