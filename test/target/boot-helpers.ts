/** Shared by the boot-test tests: the CLI as a child, leftovers (processes, folders), store images from raw bytes. */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { ImageStore } from '../../src/store/index.ts';

export const bin = fileURLToPath(new URL('../../bin/vmlift', import.meta.url));
export const MiB = 1 << 20;

export interface Run { code: number; out: string; err: string }

export function vmlift(args: string[], env: NodeJS.ProcessEnv = {}): { child: ChildProcess; done: Promise<Run> } {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMLIFT_FROM_SOURCE: '1', ...env } });
  let out = '', err = '';
  child.stdout!.on('data', (d: Buffer) => { out += d; });
  child.stderr!.on('data', (d: Buffer) => { err += d; });
  const done = new Promise<Run>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, sig) => resolve({ code: code ?? (sig ? 128 : -1), out, err }));
  });
  return { child, done };
}

/** Pids whose command line mentions `needle`, and the executable of each. */
export async function processesWith(needle: string): Promise<{ pid: number; cmd: string }[]> {
  const out: { pid: number; cmd: string }[] = [];
  for (const p of await readdir('/proc')) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    const cmd = (await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ');
    if (cmd.includes(needle)) out.push({ pid: Number(p), cmd: cmd.slice(0, 200) });
  }
  return out;
}

/** Waits (up to 10 s) for processes mentioning `needle` to end; returns those left. */
export async function leftoverProcesses(needle: string): Promise<string[]> {
  for (let i = 0; i < 50 && (await processesWith(needle)).length; i++) await new Promise((r) => setTimeout(r, 200));
  return (await processesWith(needle)).map((p) => `${p.pid}: ${p.cmd}`);
}

/** Entries of a scratch TMPDIR other than tsx's cache and libguestfs' appliance cache. */
export async function leftoverFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => !/^(\.guestfs-\d+|tsx-\d+)$/.test(n));
}

/** Commits a one-disk image of `disk` (a whole number of MiB) into the store as cycle c1 of `sourceId`; all-zero 4 MiB runs become holes. */
export async function commitDisk(store: ImageStore, sourceId: string, disk: Buffer): Promise<void> {
  const w = await store.beginCycle({ sourceId, cycleId: 'c1', disks: [{ disk: 0, capacity: disk.length }] });
  const step = 4 * MiB;
  for (let o = 0; o < disk.length; o += step) {
    const part = disk.subarray(o, Math.min(o + step, disk.length));
    await w.writeExtent(0, o, part.length, part.every((b) => b === 0) ? null : part);
  }
  await w.commit();
}

/** A boot sector that prints `message` on COM1 and then loops forever: a guest that hangs. */
export function hangingBootSector(message: string): Buffer {
  const code = Buffer.from([
    0x31, 0xc0, 0x8e, 0xd8, // xor ax,ax; mov ds,ax
    0xbe, 0x14, 0x7c, // mov si, 0x7c14
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xac, 0x84, 0xc0, 0x74, 0x03, // next: lodsb; test al,al; jz hang
    0xee, 0xeb, 0xf8, // out dx,al; jmp next
    0xeb, 0xfe, // hang: jmp hang
  ]);
  const s = Buffer.alloc(512);
  code.copy(s);
  Buffer.from(`${message}\r\n\0`, 'latin1').copy(s, code.length);
  s[510] = 0x55; s[511] = 0xaa;
  return s;
}

export function isPng(b: Buffer): boolean {
  return b.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
}

/** What a boot test must not change (the store's chunk names and image files). */
export { storeDigest } from './helpers.ts';

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const b of createReadStream(path, { highWaterMark: 8 << 20 })) h.update(b as Buffer);
  return h.digest('hex');
}
