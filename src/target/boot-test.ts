/**
 * `vmlift image boot-test`: boots an image (or the converted disks of `vmlift image convert
 * --output DIR`) in QEMU as the KVM target would run it (virtio disk, a virtio NIC on user-mode
 * networking restricted to the guest), on throwaway qcow2 overlays in a temporary folder, reads
 * the serial console until a login prompt (or the multi-user target), a failure marker, a stall or
 * the timeout, saves a screenshot of the VGA console, and leaves no QEMU process and no overlay
 * behind on any path (Ctrl-C included). The stored image and DIR's files are only read.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { mkdtemp, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import type { ImageStore } from '../store/index.ts';
import { CodedError, UserError } from '../util/errors.ts';
import { onAbort } from './abort.ts';
import { chooseAccel, markKvmBroken, type Accel } from './accel-probe.ts';
import { killGroup, stopGroup } from './process-group.ts';
import { abortError } from './guestfs.ts';
import { QmpClient } from './qmp.ts';
import { qemuArgs, SERCON_COM1, OVMF_VARS, type DiskBus, type QemuDisk } from './qemu-args.ts';
import { BIOS_HANDOFF, SerialConsole, type Reached } from './serial-console.ts';

export interface BootTestOptions {
  sourceId: string;
  imageId: string;
  /** The output folder of `vmlift image convert` (convert.json and its disks). */
  converted?: string | undefined;
  timeoutSec: number;
  /** Where the screenshot and report.json go (created). */
  reportDir: string;
  accel?: 'auto' | Accel;
  /** How long initramfs-tools may wait for the root device before the boot counts as failed (its own limit is ROOTDELAY, 180 s). */
  rootWaitSec?: number;
  /** How long the console may stay silent after the BIOS hands over to the boot sector. */
  silentBootSec?: number;
  /** How long a boot may show nothing at all on the console. */
  noOutputSec?: number;
  /** After the multi-user target, how long to wait for the login prompt. */
  loginGraceSec?: number;
  /** Text that must also appear on the serial console (e.g. what a first-boot command prints); passing waits for it after the login prompt. */
  expect?: string | undefined;
  /** Progress lines (stderr in the CLI). */
  log?: (line: string) => void;
  /** Aborting kills QEMU's process group at once, removes the overlays and rejects with the signal's reason. */
  signal?: AbortSignal | undefined;
  /** The guest's memory at most this many MiB (default: the converted VM's memory, 1024 MiB unconverted); the report says when it was lowered. */
  maxMemoryMiB?: number | undefined;
}

export interface BootFailure { code: string; message: string; fix: string }

export interface BootTestReport {
  passed: boolean;
  sourceId: string;
  imageId: string;
  converted: string | null;
  accel: Accel;
  accelReason: string;
  reached: Reached | null;
  /** From QEMU's start to the login prompt (null when none was seen). */
  secondsToLogin: number | null;
  secondsToMultiUser: number | null;
  seconds: number;
  cpus: number;
  memoryMiB: number;
  /** The VM's memory when maxMemoryMiB lowered it. */
  memoryCappedFrom?: number;
  disks: { disk: number; bus: DiskBus; backing: string }[];
  /** Peak resident memory of the QEMU process (VmHWM). */
  qemuPeakRssMiB: number | null;
  consoleTail: string[];
  screenshot: string | null;
  reportFile: string;
  failure?: BootFailure;
  /** With --expect: the console line that held the text, and when (null: it did not come). */
  expected?: { text: string; line: string | null; seconds: number | null };
}

/** The part of convert.json (format 1) a boot test reads. */
interface ConvertManifest {
  format: number; sourceId: string; imageId: string; target: string;
  disks: { disk: number; file: string; bus: DiskBus; sizeBytes?: number }[];
  cpus: number; memoryMiB: number; firmware: 'bios' | 'uefi'; nic: string;
}

const CONVERT = 'run `vmlift image convert --source S --image N --output DIR` first, then `vmlift image boot-test ... --converted DIR`';

/** Fixes by failure code; the converted case has its own where the cause is then another. */
function fixFor(code: string, converted: boolean, timeoutSec: number): string {
  switch (code) {
    case 'ROOT_NOT_FOUND': case 'INITRAMFS_SHELL':
      return converted
        ? "the converted guest still does not find its root disk on virtio: check the initramfs (virtio_blk) and root= in `vmlift image inspect`, and the convert log"
        : `initramfs lacks virtio_blk: ${CONVERT} (a VMware guest's initramfs carries only the disk controllers VMware emulates)`;
    case 'NO_BOOTABLE_DEVICE':
      return "disk 0 has no boot signature (a zeroed or overwritten boot sector): make sure the VM's boot disk is its first disk and was synced whole; `vmlift image inspect` shows what the disk holds";
    case 'NO_OS':
      return "disk 0 holds no operating system (a data disk, or a boot disk without boot code): boot-test the VM's boot disk; `vmlift image inspect` shows what the disk holds";
    case 'KERNEL_PANIC':
      return converted ? 'read the panic in the console tail (a missing driver or root filesystem); check the convert log' : `read the panic in the console tail; ${CONVERT}`;
    case 'EMERGENCY_MODE':
      return 'a filesystem of /etc/fstab did not mount: name it by UUID= (vmlift image convert does) or mark it nofail';
    case 'NO_CONSOLE_OUTPUT':
      return 'QEMU ran but nothing reached the serial console, not even the BIOS: check the screenshot, and try --accel tcg';
    case 'BOOT_TIMEOUT':
      return `the guest neither reached a login prompt nor failed visibly in ${timeoutSec} s: look at the screenshot and the console tail; under TCG on a loaded machine raise --timeout; a guest without a serial console (console=ttyS0, serial-getty) shows its login prompt on the VGA screen only`;
    case 'EXPECT_MISSING':
      return 'the guest booted, but what was expected on its console did not come: check the command that prints it (a first-boot command runs once, after the network target) and raise --timeout under TCG';
    case 'GUEST_STOPPED':
      return 'QEMU stopped the guest (with KVM: an emulation failure, "KVM internal error"): run again with --accel tcg';
    case 'QEMU_CRASHED':
      return 'QEMU itself crashed (under KVM on a nested host: a CPU feature or MSR the host cannot give): read the QEMU message, and run again with --accel tcg';
    case 'QEMU_EXITED':
      return 'the guest reset or powered off before its login prompt (a triple fault: boot code that crashes), or QEMU failed: read the QEMU message and the console tail';
    default:
      return 'read the console tail and the screenshot';
  }
}

/** The failures of a boot under KVM that broken nested KVM causes (then TCG is tried), and how the reason says each. */
const KVM_BROKE: Record<string, string> = {
  GUEST_STOPPED: 'stopped this guest (KVM internal error)', NO_CONSOLE_OUTPUT: 'showed no console output', QEMU_CRASHED: 'QEMU crashed',
};

async function readManifest(dir: string, o: BootTestOptions): Promise<ConvertManifest> {
  const file = join(dir, 'convert.json');
  let m: ConvertManifest;
  try {
    m = JSON.parse(await readFile(file, 'utf8')) as ConvertManifest;
  } catch (e) {
    throw new UserError('BAD_CONVERTED', `${file} cannot be read: ${(e as Error).message}`,
      'give --converted the --output folder of `vmlift image convert`');
  }
  if (m.format !== 1 || !Array.isArray(m.disks) || m.disks.length === 0) {
    throw new UserError('BAD_CONVERTED', `${file} is not a convert manifest of format 1 with disks`, 'convert again with this vmlift version');
  }
  if (m.sourceId !== o.sourceId || m.imageId !== o.imageId) {
    throw new UserError('CONVERTED_MISMATCH', `${dir} holds image ${m.imageId} of source ${m.sourceId}, not image ${o.imageId} of ${o.sourceId}`,
      `boot-test with --source ${m.sourceId} --image ${m.imageId}, or convert image ${o.imageId} first`);
  }
  for (const d of m.disks) {
    if (isAbsolute(d.file) || d.file.includes('..')) throw new UserError('BAD_CONVERTED', `convert.json names disk file ${d.file} outside ${dir}`, 'convert again');
    const st = await stat(join(dir, d.file)).catch(() => null);
    if (!st?.isFile()) throw new UserError('BAD_CONVERTED', `${join(dir, d.file)} (disk ${d.disk} of convert.json) is missing`, 'convert again');
  }
  return m;
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((res, rej) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => { err += d; });
    p.on('error', (e) => rej((e as NodeJS.ErrnoException).code === 'ENOENT'
      ? new UserError('QEMU_MISSING', `${cmd} is not installed`, 'install qemu-utils and qemu-system-x86 (scripts/setup.sh)') : e));
    p.on('close', (c) => (c === 0 ? res() : rej(new CodedError('QEMU_IMG_FAILED', `${cmd} ${args[0]} failed: ${err.trim()}`, { fix: 'check free space in the temporary folder (TMPDIR)' }))));
  });
}

/** Listens on a unix socket for QEMU's one connection. */
function listenOnce(path: string): { server: Server; conn: Promise<Socket> } {
  const server = createServer();
  const conn = new Promise<Socket>((res) => server.once('connection', (s) => res(s)));
  server.listen(path);
  return { server, conn };
}

function peakRssMiB(pid: number): number | null {
  try {
    const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Math.round(Number(m[1]) / 1024) : null;
  } catch { return null; }
}

export async function bootTest(store: ImageStore, o: BootTestOptions): Promise<BootTestReport> {
  const log = o.log ?? (() => undefined);
  const info = await store.getImage(o.sourceId, o.imageId);
  const convertedDir = o.converted ? resolve(o.converted) : null;
  const manifest = convertedDir ? await readManifest(convertedDir, o) : null;
  const reportDir = resolve(o.reportDir);
  await mkdir(reportDir, { recursive: true });

  const tmp = await mkdtemp(join(tmpdir(), 'vmlift-boot-'));
  let unpin: (() => Promise<void>) | null = null;
  let child = null as ChildProcess | null;
  const servers: Server[] = [];
  const unregister = onAbort(() => {
    if (child?.pid) killGroup(child.pid, 'SIGKILL');
    rmSync(tmp, { recursive: true, force: true });
  });
  const signal = o.signal;
  const onSignal = () => { if (child?.pid) killGroup(child.pid, 'SIGKILL'); };
  signal?.addEventListener('abort', onSignal, { once: true });
  const check = () => { if (signal?.aborted) throw abortError(signal); };
  try {
    check();
    unpin = await store.pin(o.sourceId, o.imageId);
    // Overlays: QEMU writes only these; their backing files are opened read-only.
    const disks: (QemuDisk & { disk: number; backing: string; backingFile: string; backingFormat: 'raw' | 'qcow2' })[] = [];
    if (manifest && convertedDir) {
      for (const d of [...manifest.disks].sort((a, b) => a.disk - b.disk)) {
        const backing = join(convertedDir, d.file), ov = join(tmp, `disk-${d.disk}.qcow2`);
        disks.push({ disk: d.disk, file: ov, format: 'qcow2', bus: d.bus, backing, backingFile: backing, backingFormat: 'qcow2' });
      }
    } else {
      for (const d of info.disks) {
        const raw = join(tmp, `disk-${d.disk}.raw`), ov = join(tmp, `disk-${d.disk}.qcow2`);
        log(`exporting disk ${d.disk} (sparse raw) to ${raw}`);
        await store.export(o.sourceId, o.imageId, d.disk, 'raw', raw);
        check();
        disks.push({ disk: d.disk, file: ov, format: 'qcow2', bus: 'virtio', backing: `store image ${o.imageId} disk ${d.disk}`, backingFile: raw, backingFormat: 'raw' });
      }
    }
    const cpus = manifest?.cpus ?? 2;
    const vmMemoryMiB = manifest?.memoryMiB ?? 1024;
    const memoryMiB = o.maxMemoryMiB ? Math.min(vmMemoryMiB, o.maxMemoryMiB) : vmMemoryMiB;
    const firmware = manifest?.firmware ?? 'bios';
    const nic = manifest?.nic === 'e1000' ? 'e1000' : 'virtio-net-pci';

    let choice = o.accel === 'kvm' || o.accel === 'tcg'
      ? { accel: o.accel, reason: `--accel ${o.accel}` } : await chooseAccel();
    log(`accelerator: ${choice.accel} (${choice.reason})`);
    check();

    const sercon = join(tmp, 'sercon-port');
    await writeFile(sercon, SERCON_COM1);
    let uefiVars: string | undefined;
    if (firmware === 'uefi') {
      const vars = OVMF_VARS.find((f) => { try { return readFileSync(f).length > 0; } catch { return false; } });
      if (!vars) throw new UserError('UEFI_MISSING', 'the image boots with UEFI and no OVMF firmware is installed', 'apt-get install ovmf');
      uefiVars = join(tmp, 'OVMF_VARS.fd');
      await writeFile(uefiVars, readFileSync(vars));
    }
    const rootWait = (o.rootWaitSec ?? 45) * 1000, silent = (o.silentBootSec ?? 20) * 1000;
    const grace = (o.loginGraceSec ?? 20) * 1000;
    let attempt = 0;

    /** One QEMU run on fresh overlays, to a login prompt, a failure or the timeout; QEMU is gone when it returns. */
    const boot = async (accel: Accel) => {
      attempt++;
      for (const d of disks) {
        await rm(d.file, { force: true });
        await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', d.backingFormat, '-b', d.backingFile, d.file]);
      }
      // KVM that cannot run this guest shows it at once (a stop, or not even the BIOS on the console).
      const noOutput = (o.noOutputSec ?? (accel === 'kvm' ? 15 : 60)) * 1000;
      const serialPath = join(tmp, `serial-${attempt}.sock`), qmpPath = join(tmp, `qmp-${attempt}.sock`);
      const serial = listenOnce(serialPath), qmpL = listenOnce(qmpPath);
      servers.push(serial.server, qmpL.server);
      const args = qemuArgs({ accel, cpus, memoryMiB, disks, nic, firmware, serialSocket: serialPath, qmpSocket: qmpPath,
        serconFile: sercon, uefiVars, name: `vmlift-boot-test-${o.sourceId}-${o.imageId}` });

      const con = new SerialConsole(40);
      con.expect = o.expect ?? null;
      const t0 = Date.now();
      check();
      const p = spawn('qemu-system-x86_64', args, { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
      child = p;
      let stderr = '';
      p.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-8000); });
      // (typed by assertion: it is set in an event handler, so TypeScript must not narrow it to null)
      let exited = null as string | null;
      const spawnError = new Promise<never>((_, rej) => p.on('error', (e) => rej((e as NodeJS.ErrnoException).code === 'ENOENT'
        ? new UserError('QEMU_MISSING', 'qemu-system-x86_64 is not installed', 'apt-get install qemu-system-x86') : e)));
      const exitedP = new Promise<void>((r) => p.on('exit', (c, sig) => { exited = sig ? `signal ${sig}` : `exit ${c}`; r(); }));
      const qemuMessage = () => stderr.split('\n').map((l) => l.trim())
        .filter((l) => l && !/externally provided fw_cfg item names|host doesn't support requested feature/.test(l)).slice(0, 3).join('; ');
      /** QEMU's own message, as the end of a failure message. */
      const qemuSays = () => (qemuMessage() ? `: ${qemuMessage()}` : '');

      const [sSock, qSock] = await Promise.race([Promise.all([serial.conn, qmpL.conn]), spawnError,
        exitedP.then(() => { throw new CodedError('QEMU_FAILED', `qemu-system-x86_64 did not start (${exited}): ${qemuMessage()}`, { fix: 'read the QEMU message' }); })]);
      sSock.on('data', (d: Buffer) => con.feed(d));
      sSock.on('error', () => undefined);
      const serialClosed = new Promise<void>((r) => sSock.once('close', () => r()));
      let drained = false;
      // QEMU that crashes at start (an abort under KVM) drops the QMP socket: judged below as its exit.
      const qmp = await QmpClient.start(qSock).catch(async (e: unknown) => {
        await Promise.race([exitedP, new Promise((r) => setTimeout(r, 3000))]);
        if (!exited) throw e;
        return null;
      });
      log(`qemu ${p.pid} started (${accel}, ${cpus} CPUs, ${memoryMiB} MiB, ${disks.map((d) => d.bus).join('+')}); waiting for a login prompt (timeout ${o.timeoutSec} s)`);

      let failure: { code: string; message: string } | null = null;
      for (;;) {
        check();
        // QEMU's exit can be seen before the console's last bytes are read: read them first, then judge.
        if (exited && !drained) { await Promise.race([serialClosed, new Promise((r) => setTimeout(r, 1000))]); drained = true; }
        const now = Date.now();
        const expected = o.expect === undefined || con.expectedAt !== null;
        if (con.loginAt !== null && expected) break;
        if (con.failure) { failure = { code: con.failure.code, message: `${con.failure.message}: "${con.failure.line}"` }; break; }
        if (con.multiUserAt !== null && now - con.multiUserAt > grace && expected) break;
        // killed by a signal (an abort, not our quit): QEMU itself failed, whatever the guest printed last
        if (exited?.startsWith('signal ')) { failure = { code: 'QEMU_CRASHED', message: `QEMU crashed (${exited}) before a login prompt${qemuSays()}` }; break; }
        const handoff = exited ? lastHandoff(con.tail()) : null;
        if (handoff) {
          failure = { code: 'NO_OS', message: `the machine reset right after "${handoff}" with nothing printed: the boot sector holds no boot loader (its code crashed)` }; break;
        }
        if (exited) { failure = { code: 'QEMU_EXITED', message: `QEMU exited (${exited}) before a login prompt${qemuSays()}` }; break; }
        if (qmp && qmp.events.some((e) => e.event === 'STOP')) {
          const st = await qmp.status().catch(() => 'unknown');
          failure = { code: 'GUEST_STOPPED', message: `QEMU stopped the guest (status ${st})${qemuSays()}` }; break;
        }
        const since = con.waitingForRootSince;
        if (since !== null && now - since > rootWait) {
          failure = { code: 'ROOT_NOT_FOUND', message: `the guest's initramfs has been waiting ${Math.round((now - since) / 1000)} s for its root device ("Begin: Waiting for root file system")` }; break;
        }
        if (con.lastOutput !== null && now - con.lastOutput > silent && BIOS_HANDOFF.test(con.lastLine)) {
          failure = { code: 'NO_OS', message: `nothing ran after "${con.lastLine}" for ${Math.round((now - con.lastOutput) / 1000)} s: the boot sector holds no boot loader` }; break;
        }
        if (!con.sawOutput && now - t0 > noOutput) { failure = { code: 'NO_CONSOLE_OUTPUT', message: `no output on the serial console in ${noOutput / 1000} s` }; break; }
        if (now - t0 > o.timeoutSec * 1000 && o.expect !== undefined && (con.loginAt !== null || con.multiUserAt !== null)) {
          failure = { code: 'EXPECT_MISSING', message: `the guest booted (${con.reached}) but "${o.expect}" did not appear on its console within ${o.timeoutSec} s` }; break;
        }
        if (now - t0 > o.timeoutSec * 1000) { failure = { code: 'BOOT_TIMEOUT', message: `no login prompt within ${o.timeoutSec} s (last console line: "${con.lastLine}")` }; break; }
        await new Promise((r) => setTimeout(r, 200));
      }
      const seconds = (Date.now() - t0) / 1000;
      const rss = peakRssMiB(p.pid!);
      let screenshot: string | null = join(reportDir, 'console.png');
      if (exited || !qmp) screenshot = null;
      else await qmp.screendump(screenshot).catch((e) => { log(`screendump failed: ${(e as Error).message}`); screenshot = null; });
      await qmp?.quit();
      qmp?.close();
      await Promise.race([exitedP, new Promise((r) => setTimeout(r, 3000))]);
      await stopGroup(p.pid!);
      child = null;
      sSock.destroy();
      return { con, t0, seconds, rss, screenshot, failure };
    };

    let b = await boot(choice.accel);
    if (choice.accel === 'kvm' && o.accel !== 'kvm' && b.failure && b.failure.code in KVM_BROKE) {
      // The probe passed but this guest does not run under KVM here (nested KVM emulation failures): TCG, and say so.
      choice = { accel: 'tcg', reason: `KVM passed the probe but ${KVM_BROKE[b.failure.code]} after ${Math.round(b.seconds)} s: TCG` };
      markKvmBroken(choice.reason);
      log(`accelerator: tcg (${choice.reason})`);
      b = await boot('tcg');
    }
    const { con, t0, seconds, rss, screenshot, failure } = b;

    const rel = (t: number | null) => (t === null ? null : Math.round((t - t0) / 100) / 10);
    const report: BootTestReport = {
      passed: failure === null, sourceId: o.sourceId, imageId: o.imageId, converted: convertedDir,
      accel: choice.accel, accelReason: choice.reason, reached: con.reached,
      secondsToLogin: rel(con.loginAt), secondsToMultiUser: rel(con.multiUserAt), seconds: Math.round(seconds * 10) / 10,
      cpus, memoryMiB, ...(memoryMiB < vmMemoryMiB ? { memoryCappedFrom: vmMemoryMiB } : {}), disks: disks.map((d) => ({ disk: d.disk, bus: d.bus, backing: d.backing })),
      qemuPeakRssMiB: rss, consoleTail: con.tail(25), screenshot, reportFile: join(reportDir, 'report.json'),
      ...(failure ? { failure: { ...failure, fix: fixFor(failure.code, convertedDir !== null, o.timeoutSec) } } : {}),
      ...(o.expect !== undefined ? { expected: { text: o.expect, line: con.expectedLine, seconds: rel(con.expectedAt) } } : {}),
    };
    await writeFile(report.reportFile, `${JSON.stringify(report, null, 2)}\n`);
    return report;
  } catch (e) {
    if (signal?.aborted) throw abortError(signal);
    throw e;
  } finally {
    signal?.removeEventListener('abort', onSignal);
    if (child?.pid) await stopGroup(child.pid);
    for (const s of servers) s.close();
    unregister();
    await rm(tmp, { recursive: true, force: true });
    await unpin?.();
  }
}

/**
 * The BIOS hand-over line ("Booting from Hard Disk...") when nothing readable followed it: the boot
 * sector's code ran and printed nothing before the reset (stray bytes it may have sent are not text).
 */
function lastHandoff(tail: readonly string[]): string | null {
  for (let k = tail.length - 1; k >= 0; k--) {
    const line = tail[k]!.trim();
    if (BIOS_HANDOFF.test(line)) return line;
    if (/[A-Za-z0-9]{3}/.test(line)) return null;
  }
  return null;
}
