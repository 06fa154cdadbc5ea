/**
 * What the agent reports to the connector about its block devices: size, model and the mounted
 * filesystems (of the device and its partitions), from /sys/block and /proc/self/mounts, plus the
 * configured devices (which may be disk image files).
 */
import { readFile, readdir, stat, realpath } from 'node:fs/promises';
import { openSync, closeSync, fstatSync } from 'node:fs';
import { basename } from 'node:path';
import type { AgentDevice } from '../transfer/agent-link.ts';
import { openSource } from '../source/open.ts';

async function text(path: string): Promise<string | undefined> {
  try { return (await readFile(path, 'utf8')).trim(); } catch { return undefined; }
}

/** Mount points by device name (`sda1` → ['/boot']), from /proc/self/mounts. */
async function mountsByName(): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  for (const line of ((await text('/proc/self/mounts')) ?? '').split('\n')) {
    const [dev, mnt] = line.split(' ');
    if (!dev?.startsWith('/dev/') || !mnt) continue;
    let name = basename(dev);
    try { name = basename(await realpath(dev)); } catch { /* gone */ }
    const list = out.get(name) ?? [];
    list.push(mnt.replace(/\\040/g, ' '));
    out.set(name, list);
  }
  return out;
}

/** Every whole block device of /sys/block (ram and zero-size devices left out) and every configured one. */
export async function listDevices(configured: string[]): Promise<AgentDevice[]> {
  const mounts = await mountsByName();
  const out: AgentDevice[] = [];
  const seen = new Set<string>();
  let names: string[] = [];
  try { names = await readdir('/sys/block'); } catch { /* not Linux */ }
  const real = new Map<string, string>();
  for (const c of configured) real.set(await realpath(c).catch(() => c), c);
  for (const name of names.sort()) {
    if (name.startsWith('ram') || name.startsWith('zram')) continue;
    const size = Number((await text(`/sys/block/${name}/size`)) ?? 0) * 512;
    if (!size) continue;
    const parts = (await readdir(`/sys/block/${name}`).catch(() => [] as string[])).filter((p) => p.startsWith(name));
    const path = real.get(`/dev/${name}`) ?? `/dev/${name}`;
    const model = await text(`/sys/block/${name}/device/model`);
    out.push({
      path, size, type: name.startsWith('loop') ? 'loop' : 'disk', ...(model ? { model } : {}),
      mounts: [name, ...parts].flatMap((n) => mounts.get(n) ?? []), configured: real.has(`/dev/${name}`),
    });
    seen.add(`/dev/${name}`);
  }
  for (const [r, c] of real) {
    if (seen.has(r)) continue;
    const st = await stat(c).catch(() => undefined);
    let size = st?.size ?? 0;
    if (st?.isBlockDevice()) {
      const s = await openSource(c).catch(() => undefined);
      size = s?.capacity ?? 0;
      await s?.close();
    }
    out.push({ path: c, size, type: st ? (st.isBlockDevice() ? 'disk' : 'file') : 'missing', mounts: [], configured: true });
  }
  return out;
}

/** True for a path that is a block device (the connector may ask for any block device the agent reported). */
export function isBlockDevice(path: string): boolean {
  try {
    const fd = openSync(path, 'r');
    try { return fstatSync(fd).isBlockDevice(); } finally { closeSync(fd); }
  } catch {
    return false;
  }
}
