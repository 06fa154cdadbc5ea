/**
 * A few worker threads, started on first use; each request goes to the least busy one and its reply
 * (which carries the request's `id`) resolves it. A worker is unref'd while idle, so an idle pool
 * never keeps the process alive. Used by the agent's digest pool and the transfer's codec pool.
 */
import type { Worker } from 'node:worker_threads';

type Pending<R> = { resolve: (r: R) => void; reject: (e: Error) => void };

export class WorkerPool<Reply extends { id: number }> {
  private readonly workers: { w: Worker; busy: number; pending: Map<number, Pending<Reply>> }[] = [];
  private nextId = 1;
  private closed = false;

  constructor(private readonly size: number, private readonly startWorker: () => Worker) {}

  private start(): void {
    for (let i = 0; i < this.size; i++) {
      const w = this.startWorker();
      const slot = { w, busy: 0, pending: new Map<number, Pending<Reply>>() };
      w.on('message', (r: Reply) => {
        const p = slot.pending.get(r.id);
        if (!p) return;
        slot.pending.delete(r.id);
        if (--slot.busy === 0) w.unref();
        p.resolve(r);
      });
      w.on('error', (e) => {
        for (const p of slot.pending.values()) p.reject(e);
        slot.pending.clear();
      });
      w.unref();
      this.workers.push(slot);
    }
  }

  /** Post `message` (plus its `id`) to the least busy worker, moving `transfer`; resolves with the reply. */
  run(message: object, transfer: ArrayBuffer[]): Promise<Reply> {
    if (this.closed) return Promise.reject(new Error('worker pool is closed'));
    if (this.workers.length === 0) this.start();
    let slot = this.workers[0]!;
    for (const s of this.workers) if (s.busy < slot.busy) slot = s;
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      slot.pending.set(id, { resolve, reject });
      if (slot.busy++ === 0) slot.w.ref();
      slot.w.postMessage({ ...message, id }, transfer);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.workers.map((s) => s.w.terminate()));
  }
}
