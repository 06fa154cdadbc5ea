import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { JOB_STATES, type StateStore } from '../state/types.ts';
import type { EngineEvents } from './jobs.ts';

/** The connector's Prometheus metrics: bytes, cycle durations, job states, errors. */
export class EngineMetrics {
  readonly registry = new Registry();
  readonly wireBytes = new Counter({ name: 'vmlift_wire_bytes_total', help: 'Bytes sent to receivers', labelNames: ['job'], registers: [this.registry] });
  readonly sourceBytes = new Counter({ name: 'vmlift_source_bytes_read_total', help: 'Bytes read from source disks', labelNames: ['job'], registers: [this.registry] });
  readonly cycles = new Counter({ name: 'vmlift_cycles_total', help: 'Cycles ended, by result', labelNames: ['job', 'kind', 'result'], registers: [this.registry] });
  readonly errors = new Counter({ name: 'vmlift_errors_total', help: 'Failed cycle attempts, by step', labelNames: ['job', 'step'], registers: [this.registry] });
  readonly cycleSeconds = new Histogram({
    name: 'vmlift_cycle_duration_seconds', help: 'Wall time of committed cycles', labelNames: ['kind'],
    buckets: [1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600], registers: [this.registry],
  });

  /** Engine hooks that feed these metrics. */
  readonly events: EngineEvents = {
    cycleCommitted: (e) => {
      this.wireBytes.inc({ job: e.jobId }, e.wireBytes);
      this.sourceBytes.inc({ job: e.jobId }, e.sourceBytesRead);
      this.cycles.inc({ job: e.jobId, kind: e.kind, result: 'committed' });
      this.cycleSeconds.observe({ kind: e.kind }, e.seconds);
    },
    cycleFailed: (e) => {
      this.errors.inc({ job: e.jobId, step: e.step });
      if (!e.transient) this.cycles.inc({ job: e.jobId, kind: 'any', result: 'failed' });
    },
  };

  constructor(state: StateStore) {
    collectDefaultMetrics({ register: this.registry, prefix: 'vmlift_connector_' });
    new Gauge({
      name: 'vmlift_jobs', help: 'Jobs by state', labelNames: ['state'], registers: [this.registry],
      collect() {
        const counts = new Map<string, number>(JOB_STATES.map((s) => [s, 0]));
        for (const j of state.listJobs()) counts.set(j.state, (counts.get(j.state) ?? 0) + 1);
        for (const [s, n] of counts) this.set({ state: s }, n);
      },
    });
  }
}
