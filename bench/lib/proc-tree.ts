/**
 * CPU time and peak memory of a process tree that daemonises part of itself (guestfish --listen and
 * its libguestfs appliance leave the tree: they are reparented to init), measured from /proc:
 *
 * - peak RSS: at each sample (every `intervalMs`), the sum of VmRSS of every process in the set, the
 *   maximum over time. The set: the descendants of `roots` (minus `exclude` and their descendants),
 *   every process whose command line names one of `needles`, and their descendants. Shared pages
 *   count once per process, so the sum is an upper figure.
 * - CPU (user+sys): what this process's reaped children used (the growth of its cutime+cstime, which
 *   includes their own waited-for children, however short-lived), plus, for each sampled process
 *   that was no longer a descendant of this process at its last sample (a daemon and its children),
 *   the CPU it had used by then. A daemon's last `intervalMs` and children it starts and reaps
 *   between two samples are missed, so that part is a lower figure.
 *
 * Only processes that start after `start()` should be measured this way: this process's other
 * children must not end meanwhile (their time would count too).
 */
import { readdirSync, readFileSync } from 'node:fs';

const TICK = 100; // USER_HZ on Linux

interface Proc { pid: number; ppid: number; start: number; cpuTicks: number; childTicks: number; rssKiB: number; cmd: string }

function readProc(pid: number, withCmd: boolean): Proc | null {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    // Fields after the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14) ... starttime(19) vsize(20) rss(21, pages).
    const rssKiB = Number(f[21]) * 4;
    return { pid, ppid: Number(f[1]), start: Number(f[19]), cpuTicks: Number(f[11]) + Number(f[12]), childTicks: Number(f[13]) + Number(f[14]), rssKiB,
      cmd: withCmd ? readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ') : '' };
  } catch { return null; }
}

export function allProcesses(): Map<number, Proc> {
  const m = new Map<number, Proc>();
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    const s = readProc(Number(p), true);
    if (s) m.set(s.pid, s);
  }
  return m;
}

/** CPU seconds (user+sys) this process's reaped children have used so far. */
export function reapedChildrenSeconds(): number {
  return (readProc(process.pid, false)?.childTicks ?? 0) / TICK;
}

/** CPU seconds (user+sys) of one process and its reaped children so far (0 when gone). */
export function processSeconds(pid: number): number {
  const p = readProc(pid, false);
  return p ? (p.cpuTicks + p.childTicks) / TICK : 0;
}

export interface TreeSample {
  /** Processes of the set at this sample (pid, command line). */
  procs: { pid: number; cmd: string }[];
}

export interface TreeFigures {
  peakRssMiB: number;
  cpuSeconds: number;
  /** Of cpuSeconds: the daemonised part (sampled). */
  daemonCpuSeconds: number;
  /** Distinct `-m` values of qemu-system processes seen in the set (guest memory in MiB), with their command's first words. */
  qemuMemory: { memoryMiB: number; what: string }[];
  samples: number;
}

export interface TreeOptions {
  roots: () => number[];
  needles: string[];
  exclude?: number[];
  intervalMs?: number;
  /** Called with each sample (e.g. to watch which step is running). */
  onSample?: (s: TreeSample) => void;
}

export class TreeMeter {
  private readonly timer: NodeJS.Timeout;
  private readonly childStart = reapedChildrenSeconds();
  private peakKiB = 0;
  private samples = 0;
  /** pid:starttime → last CPU ticks seen and whether it was attached to this process then. */
  private readonly seen = new Map<string, { ticks: number; attached: boolean }>();
  private readonly qemu = new Map<string, { memoryMiB: number; what: string }>();

  constructor(private readonly o: TreeOptions) {
    this.timer = setInterval(() => this.sample(), o.intervalMs ?? 500);
    this.sample();
  }

  sample(): TreeSample {
    const all = allProcesses();
    const kids = new Map<number, number[]>();
    for (const p of all.values()) (kids.get(p.ppid) ?? kids.set(p.ppid, []).get(p.ppid)!).push(p.pid);
    const exclude = new Set(this.o.exclude ?? []);
    const chosen = new Set<number>();
    const add = (pid: number) => {
      if (chosen.has(pid) || exclude.has(pid) || pid === process.pid || !all.has(pid)) return;
      chosen.add(pid);
      for (const c of kids.get(pid) ?? []) add(c);
    };
    for (const r of this.o.roots()) { if (r === process.pid) for (const c of kids.get(r) ?? []) add(c); else add(r); }
    for (const p of all.values()) if (this.o.needles.some((n) => p.cmd.includes(n))) add(p.pid);
    const attached = (pid: number): boolean => {
      for (let p = all.get(pid), hops = 0; p && hops < 64; p = all.get(p.ppid), hops++) if (p.ppid === process.pid) return true;
      return false;
    };
    let kib = 0;
    const procs: { pid: number; cmd: string }[] = [];
    for (const pid of chosen) {
      const p = all.get(pid)!;
      kib += p.rssKiB;
      procs.push({ pid, cmd: p.cmd });
      this.seen.set(`${pid}:${p.start}`, { ticks: p.cpuTicks, attached: attached(pid) });
      if (/qemu-system/.test(p.cmd)) {
        const m = / -m (?:size=)?(\d+)/.exec(p.cmd);
        if (m) {
          const what = / -name (\S+)/.exec(p.cmd)?.[1] ?? (p.cmd.includes('guestfs') ? 'libguestfs appliance' : 'qemu');
          this.qemu.set(`${what}:${m[1]}`, { memoryMiB: Number(m[1]), what });
        }
      }
    }
    this.peakKiB = Math.max(this.peakKiB, kib);
    this.samples++;
    const s = { procs };
    this.o.onSample?.(s);
    return s;
  }

  stop(): TreeFigures {
    clearInterval(this.timer);
    this.sample();
    let daemonTicks = 0;
    for (const v of this.seen.values()) if (!v.attached) daemonTicks += v.ticks;
    const reaped = reapedChildrenSeconds() - this.childStart;
    return {
      peakRssMiB: Math.round(this.peakKiB / 1024), cpuSeconds: reaped + daemonTicks / TICK, daemonCpuSeconds: daemonTicks / TICK,
      qemuMemory: [...this.qemu.values()], samples: this.samples,
    };
  }
}
