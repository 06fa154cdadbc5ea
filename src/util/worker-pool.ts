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

  /** Starts workers up to `size` (first use, or after one exited). */
  private start(): void {
    while (this.workers.length < this.size) {
      const w = this.startWorker();
      const slot = { w, busy: 0, pending: new Map<number, Pending<Reply>>() };
      const failAll = (e: Error): void => {
        for (const p of slot.pending.values()) p.reject(e);
        slot.pending.clear();
      };
      w.on('message', (r: Reply) => {
        const p = slot.pending.get(r.id);
        if (!p) return;
        slot.pending.delete(r.id);
        if (--slot.busy === 0) w.unref();
        p.resolve(r);
      });
      w.on('error', failAll);
      // a worker that died (crashed, killed, out of memory): its requests fail, the next one starts a new worker
      w.once('exit', (code) => {
        const k = this.workers.indexOf(slot);
        if (k >= 0) this.workers.splice(k, 1);
        failAll(new Error(`worker thread exited (code ${code}) with requests pending`));
      });
      w.unref();
      this.workers.push(slot);
    }
  }

  /** @internal Tests: end one worker as a crash would (its pending requests fail). */
  killOne(): Promise<number> {
    const slot = this.workers[0];
    return slot ? slot.w.terminate() : Promise.resolve(0);
  }

  /** Post `message` (plus its `id`) to the least busy worker, moving `transfer`; resolves with the reply. */
  run(message: object, transfer: ArrayBuffer[]): Promise<Reply> {
    if (this.closed) return Promise.reject(new Error('worker pool is closed'));
    if (this.workers.length < this.size) this.start();
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
