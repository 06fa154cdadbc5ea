/**
 * The agent's preflight (`vmlift agent check`, and the start of a first cycle under `agent serve`).
 * Blocking checks (`fail`, each with its fix): root access, every device readable, free space for the
 * agent's state, the receiver's control and data ports reachable (directly or through the proxy, TLS
 * with the pinned fingerprint), and the clock against the receiver's. Target readiness hints (`warn`):
 * virtio modules in the initramfs, GRUB ≥ 2.02, the SELinux mode, cloud-init.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, readdir, statfs, mkdir } from 'node:fs/promises';
import { release } from 'node:os';
import { promisify } from 'node:util';
import { request } from 'node:http';
import type { AgentCheck } from '../transfer/agent-link.ts';
import { connectPinned, normalizeFingerprint, parseHostPort, parseProxy } from '../transfer/connect.ts';
import { openSource } from '../source/open.ts';
import { errorMessage, UserError } from '../util/errors.ts';
import { BLOCK_SIZE, DIGEST_SIZE } from './manifest.ts';

const execFileP = promisify(execFile);

export interface CheckOptions {
  devices: string[];
  stateDir: string;
  receiver?: { address: string; fingerprint: string; dataPort?: number };
  proxy?: string;
  proxyPassword?: string;
  /** Largest clock difference with the receiver that passes (default 60 s). */
  maxSkewSeconds?: number;
  /** Leave out the target hints (they read /boot and run grub-install --version). */
  hints?: boolean;
  timeoutMs?: number;
}

const MARGIN = 64 << 20;
const DEFAULT_DATA_PORT = 8703;

export async function runAgentChecks(o: CheckOptions): Promise<AgentCheck[]> {
  const out: AgentCheck[] = [];
  const root = process.getuid?.() === 0;
  out.push(root
    ? { name: 'root', status: 'ok', message: 'running as root' }
    : { name: 'root', status: 'fail', message: `running as uid ${process.getuid?.()}, not root: block devices and /boot cannot be read`, fix: 'run the agent as root (sudo vmlift agent …, or the systemd unit as User=root)' });

  let capacity = 0;
  if (o.devices.length === 0) out.push({ name: 'devices', status: 'fail', message: 'no device to read', fix: 'name the devices with --device PATH, "devices" in /etc/vmlift/agent.json, or the job\'s --devices' });
  for (const d of o.devices) {
    try {
      const s = await openSource(d);
      try {
        await s.read(0, Math.min(BLOCK_SIZE, s.capacity));
        capacity += s.capacity;
        out.push({ name: `device ${d}`, status: 'ok', message: `readable, ${s.capacity} bytes` });
      } finally { await s.close(); }
    } catch (e) {
      out.push({ name: `device ${d}`, status: 'fail', message: `${d} cannot be read: ${errorMessage(e)}`, fix: `check that ${d} exists (lsblk) and that the agent runs as root` });
    }
  }

  try {
    await mkdir(o.stateDir, { recursive: true, mode: 0o700 });
    const st = await statfs(o.stateDir);
    const free = st.bavail * st.bsize;
    // the previous image's manifest and the one being written, side by side
    const need = 2 * Math.ceil(capacity / BLOCK_SIZE) * DIGEST_SIZE + MARGIN;
    out.push(free >= need
      ? { name: 'state space', status: 'ok', message: `${o.stateDir}: ${mib(free)} MiB free, ${mib(need)} MiB needed` }
      : { name: 'state space', status: 'fail', message: `${o.stateDir} has ${mib(free)} MiB free; the block digests of ${mib(capacity)} MiB of devices need ${mib(need)} MiB`, fix: `free space there, or put the state elsewhere with --state-dir (or "stateDir" in agent.json)` });
  } catch (e) {
    out.push({ name: 'state space', status: 'fail', message: `cannot use the state directory ${o.stateDir}: ${errorMessage(e)}`, fix: 'pass a writable --state-dir' });
  }

  if (o.receiver) out.push(...await receiverChecks(o, o.receiver));
  else out.push({ name: 'receiver', status: 'fail', message: 'no receiver known', fix: 'pass --receiver HOST[:PORT] --fingerprint FP, or set "receiver" and "fingerprint" in agent.json' });

  if (o.hints !== false) out.push(...await targetHints());
  return out;
}

/** Control and data ports (TLS, pinned), the clock against the receiver's `Date`. */
async function receiverChecks(o: CheckOptions, r: NonNullable<CheckOptions['receiver']>): Promise<AgentCheck[]> {
  const out: AgentCheck[] = [];
  const via = o.proxy ? ' through the proxy' : '';
  let host: string; let port: number; let fingerprint: string;
  let proxy: ReturnType<typeof parseProxy> | undefined;
  try {
    ({ host, port } = parseHostPort(r.address, 8080));
    fingerprint = normalizeFingerprint(r.fingerprint);
    proxy = o.proxy ? parseProxy(o.proxy, o.proxyPassword) : undefined;
  } catch (e) {
    return [{ name: 'receiver', status: 'fail', message: errorMessage(e), fix: (e as UserError).fix ?? 'check the receiver\'s address and fingerprint' }];
  }
  const timeoutMs = o.timeoutMs ?? 10_000;
  let date: string | undefined;
  try {
    const s = await connectPinned({ host, port, fingerprint, proxy, timeoutMs });
    date = await new Promise<string | undefined>((resolve, reject) => {
      const req = request({ createConnection: () => s, path: '/v1/whoami', method: 'GET', headers: { host: `${host}:${port}` }, timeout: timeoutMs }, (res) => {
        res.resume();
        resolve(res.headers.date);
      });
      req.once('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
      req.once('error', reject);
      req.end();
    });
    s.destroy();
    out.push({ name: 'receiver control port', status: 'ok', message: `${host}:${port} answers${via}, certificate matches the pinned fingerprint` });
  } catch (e) {
    out.push({ name: 'receiver control port', status: 'fail', message: `${host}:${port}${via}: ${errorMessage(e)}`, fix: (e as UserError).fix ?? `open TCP ${port} from this server to the receiver${o.proxy ? ' and allow CONNECT to it on the proxy' : ''}` });
  }
  const dataPort = r.dataPort ?? DEFAULT_DATA_PORT;
  try {
    const s = await connectPinned({ host, port: dataPort, fingerprint, proxy, timeoutMs });
    s.destroy();
    out.push({ name: 'receiver data port', status: 'ok', message: `${host}:${dataPort} answers${via}` });
  } catch (e) {
    out.push({ name: 'receiver data port', status: 'fail', message: `${host}:${dataPort}${via}: ${errorMessage(e)}`, fix: `open TCP ${dataPort} from this server to the receiver${o.proxy ? ' and allow CONNECT to it on the proxy' : ''} (the data port; --data-port when it is forwarded to another)` });
  }
  if (date) {
    const skew = Math.round((Date.now() - Date.parse(date)) / 1000);
    const max = o.maxSkewSeconds ?? 60;
    out.push(Math.abs(skew) <= max
      ? { name: 'clock', status: 'ok', message: `${Math.abs(skew)} s from the receiver's clock` }
      : { name: 'clock', status: 'fail', message: `this server's clock is ${Math.abs(skew)} s ${skew > 0 ? 'ahead of' : 'behind'} the receiver's (more than ${max} s)`, fix: 'synchronise the clock with NTP: `timedatectl set-ntp true` or `chronyc makestep`' });
  }
  return out;
}

function mib(n: number): number { return Math.ceil(n / (1 << 20)); }

async function run(cmd: string, args: string[]): Promise<string | undefined> {
  try {
    const r = await execFileP(cmd, args, { timeout: 30_000, maxBuffer: 32 << 20 });
    return `${r.stdout}${r.stderr}`;
  } catch (e) {
    const x = e as { stdout?: string; code?: unknown };
    return typeof x.stdout === 'string' && x.stdout && x.code !== 'ENOENT' ? x.stdout : undefined;
  }
}

/** Hints about how the image will boot on a KVM target: never blocking. */
export async function targetHints(): Promise<AgentCheck[]> {
  return [await virtioHint(), await grubHint(), await selinuxHint(), cloudInitHint()];
}

async function virtioHint(): Promise<AgentCheck> {
  const rel = release();
  const need = ['virtio_blk', 'virtio_scsi', 'virtio_net'];
  const builtin = await readFile(`/lib/modules/${rel}/modules.builtin`, 'utf8').catch(() => '');
  const missing = need.filter((m) => !builtin.includes(`/${m}.ko`));
  if (missing.length === 0) return { name: 'virtio drivers', status: 'ok', message: `built into kernel ${rel}` };
  const boot = await readdir('/boot').catch(() => [] as string[]);
  const initrd = [`initrd.img-${rel}`, `initramfs-${rel}.img`].find((f) => boot.includes(f));
  const fix = 'add the virtio modules to the initramfs: Debian/Ubuntu `printf "virtio_blk\\nvirtio_scsi\\nvirtio_net\\n" >> /etc/initramfs-tools/modules && update-initramfs -u`; RHEL `dracut -f --add-drivers "virtio_blk virtio_scsi virtio_net"`';
  if (!initrd) return { name: 'virtio drivers', status: 'warn', message: `no initramfs for kernel ${rel} in /boot: cannot tell whether ${missing.join(', ')} load at boot`, fix };
  const listing = await run('lsinitramfs', [`/boot/${initrd}`]) ?? await run('lsinitrd', [`/boot/${initrd}`]);
  if (listing === undefined) return { name: 'virtio drivers', status: 'warn', message: `cannot list /boot/${initrd} (neither lsinitramfs nor lsinitrd runs)`, fix };
  const absent = missing.filter((m) => !listing.includes(`${m}.ko`));
  return absent.length === 0
    ? { name: 'virtio drivers', status: 'ok', message: `/boot/${initrd} holds ${missing.join(', ')}` }
    : { name: 'virtio drivers', status: 'warn', message: `/boot/${initrd} lacks ${absent.join(', ')}: the image may not find its disks on a KVM target`, fix };
}

async function grubHint(): Promise<AgentCheck> {
  const v = await run('grub-install', ['--version']) ?? await run('grub2-install', ['--version']);
  if (v === undefined) {
    return existsSync('/boot/grub/grub.cfg') || existsSync('/boot/grub2/grub.cfg')
      ? { name: 'grub', status: 'warn', message: 'a GRUB configuration is in /boot but grub-install is missing: the version is unknown', fix: 'install the grub package of the distribution (GRUB 2.02 or later)' }
      : { name: 'grub', status: 'warn', message: 'no GRUB found: the target must boot this server another way (UEFI stub, systemd-boot)', fix: 'check that the target supports the boot loader, or install GRUB 2.02 or later' };
  }
  const m = /(\d+)\.(\d+)/.exec(v);
  const ok = m ? Number(m[1]) > 2 || (Number(m[1]) === 2 && Number(m[2]) >= 2) : false;
  return ok
    ? { name: 'grub', status: 'ok', message: `GRUB ${m![0]}` }
    : { name: 'grub', status: 'warn', message: `GRUB ${m?.[0] ?? v.trim()} is older than 2.02`, fix: 'upgrade GRUB to 2.02 or later before the final sync' };
}

async function selinuxHint(): Promise<AgentCheck> {
  const enforce = (await readFile('/sys/fs/selinux/enforce', 'utf8').catch(() => '')).trim();
  const conf = /^SELINUX=(\w+)/m.exec(await readFile('/etc/selinux/config', 'utf8').catch(() => ''))?.[1];
  const mode = enforce === '1' ? 'enforcing' : enforce === '0' ? 'permissive' : conf ?? 'disabled';
  return mode === 'enforcing'
    ? { name: 'selinux', status: 'warn', message: 'SELinux is enforcing: files changed by the conversion need relabelling', fix: 'run `touch /.autorelabel` before the final sync (the first boot relabels), or keep SELinux permissive during the cut-over' }
    : { name: 'selinux', status: 'ok', message: `SELinux ${mode}` };
}

function cloudInitHint(): AgentCheck {
  return existsSync('/usr/bin/cloud-init') || existsSync('/etc/cloud/cloud.cfg')
    ? { name: 'cloud-init', status: 'ok', message: 'cloud-init is installed' }
    : { name: 'cloud-init', status: 'warn', message: 'cloud-init is not installed: the target cannot set the network, host name or SSH keys at first boot', fix: 'install it: `apt-get install cloud-init` or `dnf install cloud-init`' };
}

/** The refusal of a first cycle whose blocking checks failed: every message and every fix. */
export function checkFailure(checks: AgentCheck[]): UserError | null {
  const failed = checks.filter((c) => c.status === 'fail');
  if (!failed.length) return null;
  return new UserError('AGENT_CHECK', `agent preflight failed: ${failed.map((c) => `${c.name}: ${c.message}`).join('; ')}`,
    `${failed.map((c) => c.fix).filter(Boolean).join('; ')}; then \`vmlift job resume\` (or force past it with \`vmlift agent serve --ignore-check\`)`);
}
