import type { FileHandle } from 'node:fs/promises';

/**
 * A cycle's refs.log: the name of every chunk the cycle creates or reuses, appended *before* the
 * chunk file is created or touched (gc reads it; see gc.ts). Concurrent notes are group-committed:
 * one append per batch, off the main thread (a checked new chunk's name is appended by the native
 * call that stores it, packs.ts `appendChecked`; the file is opened to append, so lines never mix). No fsync: gc reads it from the same machine's page cache,
 * and after a crash the cycle's unflushed references are gone anyway.
 */
export class RefsJournal {
  private queued: string[] = [];
  private next: { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void } | null = null;
  private writing = false;

  constructor(private readonly fh: FileHandle) {}

  note(hex: string): Promise<void> {
    this.queued.push(hex);
    if (this.next) return this.next.promise;
    let resolve!: () => void; let reject!: (e: unknown) => void;
    const promise = new Promise<void>((res, rej) => { resolve = res; reject = rej; });
    this.next = { promise, resolve, reject };
    if (!this.writing) void this.drain();
    return promise;
  }

  private async drain(): Promise<void> {
    this.writing = true;
    while (this.next) {
      const batch = Buffer.from(`${this.queued.join('\n')}\n`);
      const done = this.next;
      this.queued = [];
      this.next = null;
      try {
        for (let off = 0; off < batch.length;) off += (await this.fh.write(batch, off, batch.length - off)).bytesWritten;
        done.resolve();
      } catch (e) {
        done.reject(e);
      }
    }
    this.writing = false;
  }

  /** The journal's file, opened to append: a native append (packs.ts, `appendChecked`) may add a line of its own. */
  get fd(): number { return this.fh.fd; }

  close(): Promise<void> {
    return this.fh.close();
  }
}
