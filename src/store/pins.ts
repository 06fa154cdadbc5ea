import { mkdir, open, readdir, unlink } from 'node:fs/promises';
import { unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Layout } from './layout.ts';

/** Is process `pid` alive (on this machine)? */
export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Pins mark an image as in use by an export, a verify or a beginning cycle, across processes:
 * a file `<image>.<pid>.<rand>` in the source's pins folder. Pins of dead processes are stale and ignored.
 */
export async function pinImage(layout: Layout, src: string, imageId: string): Promise<Unpin> {
  const dir = layout.pinsDir(src);
  await mkdir(dir, { recursive: true });
  const path = join(dir, `${imageId}.${process.pid}.${randomBytes(4).toString('hex')}`);
  const fh = await open(path, 'wx', 0o600);
  await fh.close();
  let released = false;
  const unpin = async () => {
    if (released) return;
    released = true;
    await unlink(path).catch(() => {});
  };
  // For clean-up on a signal, where nothing async runs any more.
  return Object.assign(unpin, { sync: () => { if (!released) { released = true; try { unlinkSync(path); } catch { /* gone */ } } } });
}

/** Releases a pin; `sync` does the same synchronously (process exit, signal). */
export type Unpin = (() => Promise<void>) & { sync(): void };

/** Live pins of `imageId` (stale ones are removed on the way). */
export async function livePins(layout: Layout, src: string, imageId: string): Promise<number> {
  let names: string[];
  try {
    names = await readdir(layout.pinsDir(src));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw e;
  }
  let n = 0;
  for (const name of names) {
    const m = /^([0-9]+)\.([0-9]+)\.[0-9a-f]+$/.exec(name);
    if (!m || m[1] !== imageId) continue;
    if (pidAlive(Number(m[2]))) n++;
    else await unlink(join(layout.pinsDir(src), name)).catch(() => {});
  }
  return n;
}
