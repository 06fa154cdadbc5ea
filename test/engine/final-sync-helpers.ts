/** For the final-sync tests: a scripted change rate on a lab VM's disk, and the connector API over a rig's engine with a home the CLI can use. */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Lab } from '../../lab/lab.ts';
import { startRig, settings, MiB, type EngineRig } from './harness.ts';
import { forecastFinalSync } from '../../src/engine/final-sync-forecast.ts';
import { ConnectorApi } from '../../src/engine/api.ts';
import { Workgroups } from '../../src/engine/workgroups.ts';
import { EngineMetrics } from '../../src/engine/metrics.ts';
import { silentLogger } from '../../src/util/log.ts';

/**
 * Guest writes at `rate` bytes/s (changeable at any time) into a disk, in sequential `block`s from
 * `from`, wrapping at `to`: what changed is what was written while the region does not wrap.
 */
export class ChangeWriter {
  rate: number;
  written = 0;
  private cursor: number;
  private stopped = false;
  private loop: Promise<void> | undefined;
  private readonly region: { from: number; to: number };
  private readonly block: number;

  constructor(private readonly lab: Lab, private readonly vm: string, private readonly disk: number, o: { rate: number; from: number; to: number; block?: number }) {
    this.rate = o.rate;
    this.cursor = o.from;
    this.region = { from: o.from, to: o.to };
    this.block = o.block ?? 256 * 1024;
  }

  start(): void {
    this.loop = (async () => {
      let credit = 0;
      let last = performance.now();
      const data = randomBytes(this.block);
      while (!this.stopped) {
        const now = performance.now();
        credit += ((now - last) / 1000) * this.rate; // no cap: writes stalled (a snapshot removal) catch up, so the rate holds on average
        last = now;
        while (credit >= this.block && !this.stopped) {
          data.writeUInt32LE(this.written >>> 0, 0); // every block differs
          await this.lab.write(this.vm, this.disk, this.cursor, data);
          this.cursor += this.block;
          if (this.cursor + this.block > this.region.to) this.cursor = this.region.from;
          this.written += this.block;
          credit -= this.block;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }
}

/** The connector's API over the rig's engine, with a home (api.json, api-token) that `vmlift --home` reaches. */
export async function rigApi(rig: EngineRig): Promise<{ home: string; close(): Promise<void> }> {
  const home = mkdtempSync(join(tmpdir(), 'vmlift-home-'));
  const token = randomBytes(16).toString('hex');
  const api = new ConnectorApi({
    engine: rig.engine, workgroups: new Workgroups(rig.engine), metrics: new EngineMetrics(rig.state), logger: silentLogger, token,
    resolveVm: async (ref) => ({ vmRef: ref, name: ref }),
  });
  const addr = await api.listen(0);
  writeFileSync(join(home, 'api.json'), JSON.stringify({ port: addr.port }));
  writeFileSync(join(home, 'api-token'), token, { mode: 0o600 });
  return { home, async close() { await api.close(); rmSync(home, { recursive: true, force: true }); } };
}

/**
 * A rig for `--max-final-sync`: the API with a home, a scripted writer per VM whose rate is multiplied
 * by `factor` at each snapshot of its VM (the change rate a test scripts), and `warmUp`.
 */
export async function convergeRig(t: { after(fn: () => unknown): void }, vms: number): Promise<{
  rig: EngineRig; home: string; factor: Map<string, number>; writers: Map<string, ChangeWriter>;
  /** A job over the VM: full cycle, one incremental with the writer at `rate`, then 4 s of changes; returns the bound: the fixed part + `margin` s. */
  warmUp(id: string, vmName: string, rate: number, margin: number): Promise<number>;
}> {
  const rig = await startRig({ vms, diskMb: 256 });
  t.after(() => rig.close());
  const api = await rigApi(rig);
  t.after(() => api.close());
  const writers = new Map<string, ChangeWriter>();
  const factor = new Map<string, number>();
  t.after(async () => { for (const w of writers.values()) await w.stop(); });
  rig.hooks.afterSnapshot = async (vmRef) => {
    const w = writers.get(vmRef); const k = factor.get(vmRef);
    if (w && k) w.rate = Math.min(6e6, w.rate * k);
  };
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  return {
    rig, home: api.home, factor, writers,
    async warmUp(id, vmName, rate, margin) {
      const vm = rig.lab.vm(vmName);
      rig.engine.createJob({ id, vmRef: vm.moref, settings: settings({ bandwidthMbps: 40, compression: 0 }) });
      rig.engine.start(id);
      await rig.engine.runNow(id);
      const w = new ChangeWriter(rig.lab, vm.name, vm.disks[0]!.key, { rate, from: 16 * MiB, to: vm.disks[0]!.capacity });
      writers.set(vm.moref, w);
      w.start();
      await sleep(4000);
      rig.engine.requestSync(id);
      await rig.engine.runNow(id);
      const job = rig.engine.getJob(id);
      if (job.state !== 'waiting') throw new Error(`warm-up of ${id}: ${JSON.stringify(job.error)}`);
      const f = forecastFinalSync(rig.state.listCycles(id, 20), job.settings);
      if (!f.available) throw new Error(`warm-up of ${id}: ${f.reason}`);
      await sleep(4000); // changes pile up: the forecast is over the bound when the command starts
      return Math.ceil(f.forecast.fixedSeconds + margin);
    },
  };
}
