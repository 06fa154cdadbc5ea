/**
 * The engine-facing face of a VCenter: VM managed object ids in, plain data out, one method per
 * step of docs/design.md's cycle. Shaped to satisfy the engine's VCenterPort structurally (vsphere/
 * imports nothing from the engine).
 */
import type { VCenter } from './vcenter.ts';
import type { PreflightCheck } from './preflight.ts';
import type { SnapshotHandle } from './types.ts';
import type { Area } from './changes.ts';

export interface ControlSnapshotDisk { key: number; label: string; capacity: number; changeId: string | null }

export class VCenterControl {
  constructor(readonly vc: VCenter, private readonly o: { taskTimeoutMs?: number } = {}) {}

  async preflight(vmRef: string): Promise<PreflightCheck[]> {
    return (await this.vc.preflight(vmRef)).checks;
  }

  async ensureCbt(vmRef: string): Promise<{ changed: boolean }> {
    const r = await this.vc.enableCbt(vmRef, { timeoutMs: this.o.taskTimeoutMs });
    return { changed: r.changed };
  }

  async hostOf(vmRef: string): Promise<string> {
    return (await this.vc.vm(vmRef)).host?.ref ?? 'unknown-host';
  }

  async sweepSnapshots(vmRef: string, prefix: string): Promise<number> {
    return (await this.vc.sweepSnapshots(vmRef, prefix, { timeoutMs: this.o.taskTimeoutMs })).removed.length;
  }

  createSnapshot(vmRef: string, name: string, opts: { quiesce: boolean }): Promise<SnapshotHandle> {
    return this.vc.createSnapshot(vmRef, name, { quiesce: opts.quiesce, description: 'vmlift sync cycle' }, { timeoutMs: this.o.taskTimeoutMs });
  }

  async snapshotDisks(_vmRef: string, snapshot: SnapshotHandle): Promise<ControlSnapshotDisk[]> {
    return (await this.vc.snapshotDisks(snapshot.ref)).map((d) => ({ key: d.key, label: d.label, capacity: d.capacity, changeId: d.changeId }));
  }

  async changedAreas(vmRef: string, snapshot: SnapshotHandle, disk: ControlSnapshotDisk, changeId: string): Promise<Area[]> {
    return (await this.vc.changedAreas(vmRef, snapshot.ref, disk.key, changeId, disk.capacity)).areas;
  }

  async removeSnapshot(vmRef: string, snapshot: SnapshotHandle): Promise<void> {
    await this.vc.removeSnapshot(vmRef, snapshot.ref, { timeoutMs: this.o.taskTimeoutMs });
  }
}
