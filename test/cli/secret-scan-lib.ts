/**
 * The secret scanner of issue 12 §5, shared by the tests that run vmlift's processes: a poller of
 * /proc/<pid>/cmdline and environ for every process below this test, the forms a secret can take
 * (raw, base64 in three alignments, hex) and a search of texts for them.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export interface Seen { pid: number; comm: string; where: string; text: string }

/** Every process below `root` (walking the ppid of /proc/<pid>/stat), with its argv and environment. */
export function snapshotDescendants(root: number): Seen[] {
  const parent = new Map<number, number>();
  const comm = new Map<number, string>();
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try {
      const st = readFileSync(`/proc/${n}/stat`, 'utf8');
      const close = st.lastIndexOf(')');
      parent.set(Number(n), Number(st.slice(close + 2).split(' ')[1]));
      comm.set(Number(n), st.slice(st.indexOf('(') + 1, close));
    } catch { /* gone */ }
  }
  const out: Seen[] = [];
  const below = (pid: number): boolean => {
    for (let p = parent.get(pid), depth = 0; p !== undefined && depth < 64; p = parent.get(p), depth++) if (p === root) return true;
    return false;
  };
  for (const pid of parent.keys()) {
    if (!below(pid)) continue;
    for (const where of ['cmdline', 'environ']) {
      try { out.push({ pid, comm: comm.get(pid)!, where, text: readFileSync(`/proc/${pid}/${where}`, 'latin1').replace(/\0/g, ' ') }); } catch { /* gone */ }
    }
  }
  return out;
}

/** The forms a secret may take: raw, base64 and base64url in three alignments (their inner parts), hex. */
export function forms(secret: string): string[] {
  const b = Buffer.from(secret, 'utf8');
  const out = new Set([secret, b.toString('hex'), b.toString('hex').toUpperCase()]);
  for (let k = 0; k < 3; k++) {
    for (const enc of ['base64', 'base64url'] as const) {
      const s = Buffer.concat([Buffer.alloc(k), b]).toString(enc);
      const inner = s.slice(k ? 4 : 0, -4);
      if (inner.length >= 12) out.add(inner);
    }
  }
  return [...out];
}

export interface Source { what: string; text: string }
export function findSecrets(sources: Source[], secrets: Record<string, string>): string[] {
  const hits: string[] = [];
  for (const [name, value] of Object.entries(secrets)) {
    const fs = forms(value);
    for (const s of sources) for (const f of fs) if (s.text.includes(f)) hits.push(`${name} (as ${f === value ? 'itself' : f}) in ${s.what}`);
  }
  return hits;
}

/** Every `*.log` file under `dir`. */
export function logFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...logFiles(p));
    else if (e.isFile() && /\.log$/.test(e.name)) out.push(p);
  }
  return out;
}

/** Polls the process tree every 25 ms until stopped; keeps each distinct (pid, where, text). */
export function startPoller(): { stop(): Promise<Seen[]> } {
  const seen = new Map<string, Seen>();
  let running = true;
  const loop = (async () => {
    while (running) {
      for (const s of snapshotDescendants(process.pid)) seen.set(`${s.pid}\0${s.where}\0${s.text}`, s);
      await sleep(25);
    }
  })();
  return { async stop() { running = false; await loop; for (const s of snapshotDescendants(process.pid)) seen.set(`${s.pid}\0${s.where}\0${s.text}`, s); return [...seen.values()]; } };
}
