/**
 * migrate.map: the old -> new chunk names of a format 1 -> 2 migration (migrate.ts), durable before
 * any file is rewritten with them. Fixed records, appended after the pack holding their chunks is
 * sealed, then fsynced:
 *
 *   32 bytes old name (SHA-256) | 32 bytes new name (tree digest) | first 8 bytes of SHA-256 of those 64
 *
 * Reading stops at the first record that is short or fails its check (a crash mid-append); the
 * appender cuts the file there first.
 */
import { constants as fsc } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { writeFully } from '../util/write-fully.ts';

const RECORD = 72;

function check(body: Uint8Array): Buffer { return createHash('sha256').update(body).digest().subarray(0, 8); }

export class MigrateMap {
  readonly names = new Map<string, string>();
  private pending: [string, string][] = [];

  private constructor(private readonly fh: FileHandle, private size: number) {}

  /** Open (create) the map at `path`, reading its valid records and cutting a torn tail. */
  static async open(path: string): Promise<MigrateMap> {
    const fh = await open(path, fsc.O_RDWR | fsc.O_CREAT, 0o600);
    try {
      const buf = await fh.readFile();
      const m = new MigrateMap(fh, 0);
      let at = 0;
      for (; at + RECORD <= buf.length; at += RECORD) {
        if (!check(buf.subarray(at, at + 64)).equals(buf.subarray(at + 64, at + RECORD))) break;
        m.names.set(buf.toString('hex', at, at + 32), buf.toString('hex', at + 32, at + 64));
      }
      if (at !== buf.length) { await fh.truncate(at); await fh.sync(); }
      m.size = at;
      return m;
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  get(old: string): string | undefined { return this.names.get(old); }

  /** Note old -> new (in memory until `flush`; call it only once the chunk is in a sealed pack). */
  note(old: string, neu: string): void {
    if (this.names.get(old) === neu) return;
    this.names.set(old, neu);
    this.pending.push([old, neu]);
  }

  /** Append and fsync the noted records. */
  async flush(): Promise<void> {
    if (this.pending.length === 0) return;
    const buf = Buffer.alloc(this.pending.length * RECORD);
    this.pending.forEach(([o, n], k) => {
      buf.write(o, k * RECORD, 32, 'hex');
      buf.write(n, k * RECORD + 32, 32, 'hex');
      check(buf.subarray(k * RECORD, k * RECORD + 64)).copy(buf, k * RECORD + 64);
    });
    await writeFully(this.fh, buf, this.size);
    await this.fh.sync();
    this.size += buf.length;
    this.pending = [];
  }

  close(): Promise<void> { return this.fh.close(); }
}
