/** Helpers of the target tests: the vmlift CLI as a child, the store's digest, processes by command line, peak RSS of a process tree. */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const bin = fileURLToPath(new URL('../../bin/vmlift', import.meta.url));

export interface Run { code: number; out: string; err: string; pid: number }

export function vmlift(args: string[], env: NodeJS.ProcessEnv = process.env, onSpawn?: (pid: number) => void): Promise<Run> {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    if (p.pid) onSpawn?.(p.pid);
    let out = '', err = '';
    p.stdout.on('data', (d: Buffer) => { out += d; });
    p.stderr.on('data', (d: Buffer) => { err += d; });
    p.on('error', reject);
    p.on('close', (code) => resolve({ code: code ?? -1, out, err, pid: p.pid ?? 0 }));
  });
}

/** SHA-256 over the store's file names, pack indexes and image files: what must not change when an image is read. */
export async function storeDigest(root: string): Promise<string> {
  const h = createHash('sha256');
  const walk = async (d: string): Promise<void> => {
    for (const e of (await readdir(d, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(d, e.name);
      if (e.isDirectory()) { if (!['tmp', 'pins', 'locks'].includes(e.name)) await walk(p); } else if (e.isFile() && !/\.(lock|pin)$/.test(e.name)) {
        h.update(p); if (!p.includes('/chunks/') && !p.endsWith('.pack')) h.update(await readFile(p)); // a pack's index names its chunks
      }
    }
  };
  await walk(root);
  return h.digest('hex');
}

/** Pids whose command line mentions `needle`. */
export function processesWith(needle: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    let cmd = '';
    try { cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8'); } catch { continue; }
    if (cmd.includes(needle)) out.push(Number(p));
  }
  return out;
}

function procStat(pid: number): { ppid: number; rssKiB: number } | null {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const ppid = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]);
    const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return { ppid, rssKiB: rss ? Number(rss[1]) : 0 };
  } catch { return null; }
}

/**
 * Samples, once a second, the summed RSS of `root`'s descendants and of every process whose command
 * line mentions `needle` (detached daemons such as guestfish --listen and its appliance). Returns a stop function giving the peak in MiB.
 */
export function rssSampler(root: () => number, needle: string): () => { peakMiB: number; peakVmliftMiB: number } {
  let peak = 0, peakVmlift = 0;
  const tick = () => {
    const r = root();
    if (!r) return;
    const stats = new Map<number, { ppid: number; rssKiB: number }>();
    for (const p of readdirSync('/proc')) if (/^\d+$/.test(p)) { const s = procStat(Number(p)); if (s) stats.set(Number(p), s); }
    const chosen = new Set<number>([r, ...processesWith(needle)]);
    let grew = true;
    while (grew) { grew = false; for (const [pid, s] of stats) if (!chosen.has(pid) && chosen.has(s.ppid)) { chosen.add(pid); grew = true; } }
    let sum = 0;
    for (const pid of chosen) sum += stats.get(pid)?.rssKiB ?? 0;
    peak = Math.max(peak, sum);
    peakVmlift = Math.max(peakVmlift, stats.get(r)?.rssKiB ?? 0);
  };
  const t = setInterval(tick, 1000);
  return () => { clearInterval(t); return { peakMiB: Math.round(peak / 1024), peakVmliftMiB: Math.round(peakVmlift / 1024) }; };
}
