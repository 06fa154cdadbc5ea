/** For the final-sync tests: a scripted change rate on a lab VM's disk, and the connector API over a rig's engine with a home the CLI can use. */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Lab } from '../../lab/lab.ts';
import type { EngineRig } from './harness.ts';
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
        credit = Math.min(credit + ((now - last) / 1000) * this.rate, 4 * this.rate + this.block);
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
