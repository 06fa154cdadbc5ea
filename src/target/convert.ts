/**
 * `vmlift image convert --to kvm`: Debian's virt-v2v-in-place on qcow2 overlays whose backing files
 * are read-only sparse raw exports of the image (the stored image is never opened for writing),
 * then each overlay flattened into a standalone `disk-<n>.qcow2`, a libvirt domain XML, a qemu.sh
 * and convert.json (convert-manifest.ts). Everything is built in `DIR.tmp-<rand>` next to DIR and
 * renamed to DIR at the end, convert.json written last; any failure, or a signal, removes it, ends
 * every process the convert started and releases the image's pin.
 */
import { spawn, execFile } from 'node:child_process';
import { accessSync, constants, rmSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, open, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { ImageStore } from '../store/index.ts';
import type { VmHardware } from '../model/images.ts';
import { CodedError } from '../util/errors.ts';
import { fsyncDir } from '../util/fsync.ts';
import { onAbort } from './abort.ts';
import { Guestfs, abortError, guestfsEnv, pidsMentioning } from './guestfs.ts';
import { collect, type InspectReport } from './inspect.ts';
import { prepareLinux, removeShim } from './prepare-linux.ts';
import { domainXml, v2vSourceXml } from './domain-xml.ts';
import { qemuScript } from './qemu-cmdline.ts';
import { MANIFEST_FILE, type ConvertManifest } from './convert-manifest.ts';

const run = promisify(execFile);

export const V2V = 'virt-v2v-in-place';
export const DEFAULT_CPUS = 2;
export const DEFAULT_MEMORY_MIB = 2048;

export interface ConvertOptions {
  to: string;
  output: string;
  /** Progress lines (steps, virt-v2v's own). */
  onProgress?: (line: string) => void;
  /** Commands the converted guest runs once at its first boot, in order (virt-customize --firstboot-command on the converted disks: Debian's virt-v2v-in-place 2.2 has no such option). */
  firstbootCommands?: string[];
  /**
   * Aborting ends virt-v2v, the libguestfs sessions and every process naming the convert's folders at
   * once, removes the folders and rejects with the signal's reason (an export under way finishes first).
   */
  signal?: AbortSignal | undefined;
  /**
   * The libguestfs appliances' memory in MiB: vmlift's own sessions get it, and virt-v2v-in-place half
   * of it as LIBGUESTFS_MEMSIZE (2.2 doubles the handle's memsize for its appliance). Default libguestfs'
   * own: 1280 MiB for vmlift's sessions, 2560 MiB for virt-v2v's.
   */
  memoryMiB?: number | undefined;
}

/** LIBGUESTFS_MEMSIZE for virt-v2v-in-place so that its appliance gets `memoryMiB` (it starts it with twice the handle's memsize). */
export function v2vMemsize(memoryMiB: number): number {
  return Math.floor(memoryMiB / 2);
}

/** A program on PATH, or null. */
export function which(program: string, path = process.env.PATH ?? ''): string | null {
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, program);
    try { accessSync(p, constants.X_OK); return p; } catch { /* next */ }
  }
  return null;
}

/** The tools a convert runs, each missing one named with its Debian package and the fix. */
export function requireTools(path = process.env.PATH ?? ''): void {
  if (!which(V2V, path)) {
    throw new CodedError('V2V_MISSING', `${V2V} is not installed (not found on PATH): image convert runs it to convert the guest`,
      { fix: 'install Debian package virt-v2v (apt-get install virt-v2v; it ships virt-v2v-in-place 2.2), or put virt-v2v-in-place on PATH' });
  }
  if (!which('qemu-img', path)) {
    throw new CodedError('QEMU_IMG_MISSING', 'qemu-img is not installed: image convert makes its overlays and qcow2 disks with it',
      { fix: 'install Debian package qemu-utils (apt-get install qemu-utils)' });
  }
  if (!which('guestfish', path)) {
    throw new CodedError('GUESTFS_MISSING', 'guestfish (libguestfs) is not installed: image convert inspects the guest with it',
      { fix: 'install Debian packages libguestfs-tools and linux-image-amd64 (scripts/setup.sh)' });
  }
}

/**
 * Whether the inspected guest can be converted here, and with what: a coded refusal for no OS, an OS
 * vmlift does not convert, and Windows without virtio-win drivers (Debian does not ship them).
 */
export function conversionDecision(r: InspectReport, env: NodeJS.ProcessEnv = process.env, exists = pathExists): { virtioWin: string | null } {
  if (!r.os) {
    const why = r.targets.kvm.reasons.find((x) => x.code === 'NO_OS');
    throw new CodedError('CONVERT_NO_OS', `cannot convert: ${why?.message ?? 'no operating system found'}`,
      { fix: why?.fix ?? "sync the VM's boot disk", exitCode: 4 });
  }
  if (r.os.type === 'windows') {
    const vw = env.VIRTIO_WIN;
    if (vw && exists(vw)) return { virtioWin: vw };
    throw new CodedError('CONVERT_WINDOWS_VIRTIO',
      `cannot convert ${r.os.product || 'this Windows guest'}: Windows needs the virtio-win drivers (viostor, netkvm) to boot on virtio, and Debian does not ship them` +
        (vw ? `; VIRTIO_WIN=${vw} does not exist` : ''),
      { fix: 'download the virtio-win ISO (https://fedorapeople.org/groups/virt/virtio-win/direct-downloads/stable-virtio/virtio-win.iso) or install its RPM contents under /usr/share/virtio-win, then set VIRTIO_WIN to the ISO or folder and convert again', exitCode: 4 });
  }
  if (r.os.type !== 'linux') {
    throw new CodedError('CONVERT_OS_UNSUPPORTED', `cannot convert: ${r.os.type} guests are not converted by vmlift (virt-v2v converts Linux and Windows)`,
      { fix: "convert it with the vendor's tools", exitCode: 4 });
  }
  return { virtioWin: null };
}

function pathExists(p: string): boolean {
  try { accessSync(p); return true; } catch { return false; }
}

/** CPUs, memory and firmware from the image meta (vCenter at the cycle), else the defaults. */
export function hardwareOf(meta: Record<string, unknown>, r: InspectReport): { cpus: number; memoryMiB: number; firmware: 'bios' | 'uefi'; from: 'vcenter' | 'default' } {
  const vm = meta.vm as Partial<VmHardware> | undefined;
  if (vm && Number(vm.cpus) > 0 && Number(vm.memoryMiB) > 0) {
    return { cpus: Number(vm.cpus), memoryMiB: Number(vm.memoryMiB), firmware: vm.firmware === 'uefi' ? 'uefi' : 'bios', from: 'vcenter' };
  }
  return { cpus: DEFAULT_CPUS, memoryMiB: DEFAULT_MEMORY_MIB, firmware: guessFirmware(r), from: 'default' };
}

/** UEFI when the guest mounts an EFI system partition (/boot/efi), else BIOS. */
export function guessFirmware(r: InspectReport): 'bios' | 'uefi' {
  return r.fstab.some((e) => e.mountpoint === '/boot/efi') || r.filesystems.some((f) => f.mountpoint === '/boot/efi') ? 'uefi' : 'bios';
}

/** A locally administered MAC from the source id: the same VM gets the same NIC on every convert. */
export function macFor(sourceId: string): string {
  const h = createHash('sha256').update(`vmlift-nic:${sourceId}`).digest();
  return ['52', '54', '00', ...[...h.subarray(0, 3)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

function killAll(needles: string[], signal: NodeJS.Signals = 'SIGKILL'): void {
  for (const pid of pidsMentioning(needles)) { try { process.kill(pid, signal); } catch { /* gone */ } }
}

async function endProcesses(needles: string[]): Promise<void> {
  killAll(needles, 'SIGTERM');
  for (let i = 0; i < 50 && pidsMentioning(needles).length; i++) await new Promise((r) => setTimeout(r, 100));
  killAll(needles, 'SIGKILL');
  for (let i = 0; i < 30 && pidsMentioning(needles).length; i++) await new Promise((r) => setTimeout(r, 100));
}

async function qemuImg(args: string[], signal?: AbortSignal): Promise<string> {
  try {
    return (await run('qemu-img', args, { maxBuffer: 16 << 20, signal })).stdout;
  } catch (e) {
    if (signal?.aborted) throw abortError(signal);
    const err = e as { stderr?: string; message: string };
    throw new CodedError('QEMU_IMG_FAILED', `qemu-img ${args[0]} failed: ${(err.stderr ?? err.message).trim()}`, { fix: 'check free space in the output folder and the message above', cause: e });
  }
}

/** Runs virt-v2v-in-place in its own process group, its output to `log`; rejects with the end of that log. */
function runV2v(args: string[], env: NodeJS.ProcessEnv, log: string, onLine: (l: string) => void, setPgid: (pid: number) => void): Promise<void> {
  return new Promise((resolveRun, reject) => {
    const p = spawn(V2V, args, { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    if (p.pid) setPgid(p.pid);
    let text = '';
    let partial = '';
    const take = (b: Buffer) => {
      text += b.toString();
      if (text.length > 1 << 20) text = text.slice(-(1 << 19));
      partial += b.toString();
      const lines = partial.split(/\r?\n/);
      partial = lines.pop() ?? '';
      for (const l of lines) if (l.trim()) onLine(l.trim());
    };
    p.stdout.on('data', take);
    p.stderr.on('data', take);
    p.on('error', (e) => reject((e as NodeJS.ErrnoException).code === 'ENOENT'
      ? new CodedError('V2V_MISSING', `${V2V} is not installed`, { fix: 'install Debian package virt-v2v (apt-get install virt-v2v)' }) : e));
    p.on('close', (code, sig) => {
      void writeFile(log, text).catch(() => {});
      if (code === 0) return resolveRun();
      const err = /virt-v2v-in-place: error: (.*)/.exec(text)?.[1]?.trim();
      const tail = text.trim().split('\n').slice(-12).join('\n');
      reject(new CodedError('V2V_FAILED', `${V2V} failed (${sig ? `signal ${sig}` : `exit ${code}`})${err ? `: ${err}` : ''}\n${tail}`,
        { fix: err === 'no bootloader detected' ? 'the guest needs a GRUB or extlinux configuration under /boot that virt-v2v can read'
          : `run it by hand with -v -x to see why: LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg ${V2V} -v -x -i libvirtxml FILE` }));
    });
  });
}

export async function v2vVersion(): Promise<string> {
  const { stdout } = await run(V2V, ['--version']);
  return /(\d+\.\d+(\.\d+)?)/.exec(stdout)?.[1] ?? stdout.trim();
}

/** Converts image `imageId` of `sourceId` for KVM into the folder `o.output` (which must not exist). */
export async function convertImage(store: ImageStore, sourceId: string, imageId: string, o: ConvertOptions): Promise<ConvertManifest> {
  const t0 = Date.now();
  const say = o.onProgress ?? (() => {});
  if (o.to !== 'kvm') throw new CodedError('BAD_TARGET', `unknown conversion target "${o.to}"`, { fix: 'use --to kvm' });
  const out = resolve(o.output);
  const parent = dirname(out);
  if (!(await stat(parent).catch(() => null))?.isDirectory()) {
    throw new CodedError('BAD_OUTPUT', `cannot convert to ${out}: folder ${parent} does not exist`, { fix: 'give --output a new folder inside an existing one' });
  }
  if (await stat(out).catch(() => null)) {
    throw new CodedError('OUTPUT_EXISTS', `cannot convert to ${out}: it exists`, { fix: 'give --output a folder that does not exist yet (or remove the old one)' });
  }
  requireTools();
  const info = await store.getImage(sourceId, imageId);
  const unpin = await store.pin(sourceId, imageId);
  const build = `${out}.tmp-${randomBytes(4).toString('hex')}`;
  let scratch: string | null = null;
  let v2vPgid = 0;
  const needles = () => [build, ...(scratch ? [scratch] : [])];
  const unregister = onAbort(() => {
    if (v2vPgid) { try { process.kill(-v2vPgid, 'SIGKILL'); } catch { /* gone */ } }
    killAll(needles());
    rmSync(build, { recursive: true, force: true });
    if (scratch) rmSync(scratch, { recursive: true, force: true });
    unpin.sync();
  });
  const signal = o.signal;
  // On abort: every process of the convert at once; the step under way then fails and the catch below cleans up.
  const onSignal = () => {
    if (v2vPgid) { try { process.kill(-v2vPgid, 'SIGKILL'); } catch { /* gone */ } }
    killAll(needles());
  };
  signal?.addEventListener('abort', onSignal, { once: true });
  const stopIfAborted = () => { if (signal?.aborted) throw abortError(signal); };
  const gfs = { memoryMiB: o.memoryMiB, signal };
  try {
    stopIfAborted();
    await mkdir(build, { mode: 0o700 });
    scratch = await mkdtemp(join(tmpdir(), 'vmlift-convert-'));
    // Every child's temporary files (and so its command line) under `scratch`; the appliance cache stays shared.
    const env: NodeJS.ProcessEnv = { ...guestfsEnv(), TMPDIR: scratch, LIBGUESTFS_TMPDIR: scratch,
      LIBGUESTFS_CACHEDIR: process.env.LIBGUESTFS_CACHEDIR ?? tmpdir() };
    const v2vEnv: NodeJS.ProcessEnv = o.memoryMiB ? { ...env, LIBGUESTFS_MEMSIZE: String(v2vMemsize(o.memoryMiB)) } : env;

    const overlays: string[] = [];
    for (const d of info.disks) {
      say(`exporting disk ${d.disk} (${d.capacity} bytes) as sparse raw`);
      const raw = join(build, `source-${d.disk}.raw`);
      await store.export(sourceId, imageId, d.disk, 'raw', raw);
      stopIfAborted();
      await chmod(raw, 0o444);
      const ov = join(build, `overlay-${d.disk}.qcow2`);
      await qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', raw, ov], signal);
      overlays.push(ov);
    }

    say('inspecting the guest (libguestfs)');
    const g = await Guestfs.open(overlays, { format: 'qcow2', write: true, env, ...gfs });
    let report: InspectReport;
    let prepared: { changes: string[]; shim: boolean } = { changes: [], shim: false };
    let virtioWin: string | null;
    try {
      report = await collect(g, scratch);
      stopIfAborted();
      ({ virtioWin } = conversionDecision(report));
      if (report.os!.type === 'linux') prepared = await prepareLinux(g, report);
    } finally {
      await g.close();
    }
    stopIfAborted();
    for (const c of prepared.changes) say(`prepared: ${c}`);
    const os = report.os!;
    const hw = hardwareOf(info.meta, report);
    const name = sourceId;

    const xml = join(scratch, 'source.xml');
    await writeFile(xml, v2vSourceXml({ name, cpus: hw.cpus, memoryMiB: hw.memoryMiB, firmware: hw.firmware, overlays }));
    const version = await v2vVersion();
    say(`running ${V2V} ${version}`);
    const tv = Date.now();
    stopIfAborted();
    await runV2v(['-i', 'libvirtxml', xml], virtioWin ? { ...v2vEnv, VIRTIO_WIN: virtioWin } : v2vEnv, join(scratch, 'v2v.log'), (l) => say(`v2v: ${l}`), (pid) => { v2vPgid = pid; });
    v2vPgid = 0;
    const v2vSeconds = (Date.now() - tv) / 1000;

    const files: string[] = [];
    for (const [i, d] of info.disks.entries()) {
      say(`writing disk-${d.disk}.qcow2`);
      const f = join(build, `disk-${d.disk}.qcow2`);
      stopIfAborted();
      await qemuImg(['convert', '-f', 'qcow2', '-O', 'qcow2', overlays[i]!, f], signal);
      await rm(overlays[i]!, { force: true });
      await rm(join(build, `source-${d.disk}.raw`), { force: true });
      files.push(f);
    }

    if (o.firstbootCommands?.length) {
      say(`adding ${o.firstbootCommands.length} first-boot command(s) (virt-customize)`);
      const args = ['--format', 'qcow2', ...files.flatMap((f) => ['-a', f]), ...o.firstbootCommands.flatMap((c) => ['--firstboot-command', c])];
      stopIfAborted();
      await run('virt-customize', args, { env, maxBuffer: 16 << 20, signal }).catch((e: { stderr?: string; message: string }) => {
        stopIfAborted();
        throw new CodedError('CONVERT_FIRSTBOOT', `virt-customize could not add the first-boot commands: ${(e.stderr ?? e.message).trim().slice(-500)}`,
          { fix: 'check that Debian\'s guestfs-tools is installed; run the same virt-customize by hand with -v -x to see why' });
      });
      prepared.changes.push(`first-boot commands: ${o.firstbootCommands.length} (virt-customize --firstboot-command)`);
    }

    say('checking the converted disks (libguestfs)');
    let check: { verdict: string; reasons: string[] } = { verdict: 'not checked', reasons: [] };
    stopIfAborted();
    const cg = await Guestfs.open(files, { format: 'qcow2', write: true, env, ...gfs });
    try {
      if (prepared.shim && await removeShim(cg, os.root)) say('removed the menu.lst shim');
      const after = await collect(cg, scratch);
      stopIfAborted();
      const kvm = after.targets.kvm;
      check = { verdict: kvm.verdict, reasons: kvm.reasons.map((x) => x.code) };
      if (os.type === 'linux' && kvm.verdict !== 'ready') {
        throw new CodedError('CONVERT_INCOMPLETE', `the converted guest is not ready for KVM (${kvm.verdict}): ${kvm.reasons.filter((x) => x.severity !== 'warning').map((x) => x.message).join('; ')}`,
          { fix: 'see the reasons above; `vmlift image inspect` lists them for the source image, and virt-v2v-in-place -v -x shows what it did' });
      }
    } finally {
      await cg.close();
    }

    stopIfAborted();
    const disks = [];
    for (const d of info.disks) {
      const qi = JSON.parse(await qemuImg(['info', '--output=json', join(build, `disk-${d.disk}.qcow2`)], signal)) as { 'virtual-size': number; 'backing-filename'?: string };
      if (qi['backing-filename']) throw new CodedError('CONVERT_FAILED', `disk-${d.disk}.qcow2 still has a backing file ${qi['backing-filename']}`);
      disks.push({ disk: d.disk, file: `disk-${d.disk}.qcow2`, bus: 'virtio' as const, sizeBytes: qi['virtual-size'] });
    }
    const manifest: ConvertManifest = {
      format: 1, sourceId, imageId, target: 'kvm', name, disks, cpus: hw.cpus, memoryMiB: hw.memoryMiB, from: hw.from, firmware: hw.firmware,
      nic: 'virtio-net-pci', mac: macFor(sourceId),
      os: { type: os.type, distro: os.distro, version: os.version, arch: os.arch, hostname: os.hostname },
      v2v: { tool: V2V, version, seconds: v2vSeconds }, prepared: prepared.changes, check,
      seconds: 0, createdAt: new Date().toISOString(),
    };
    await writeFile(join(build, 'domain.xml'), domainXml(manifest, disks.map((d) => join(out, d.file))));
    await writeFile(join(build, 'qemu.sh'), qemuScript(manifest), { mode: 0o755 });
    manifest.seconds = (Date.now() - t0) / 1000;
    await writeFile(join(build, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n');
    for (const f of await readdir(build)) {
      const fh = await open(join(build, f), 'r');
      try { await fh.sync(); } finally { await fh.close(); }
    }
    await chmod(build, 0o755);
    await fsyncDir(build);
    await rename(build, out);
    await fsyncDir(parent);
    say(`converted in ${manifest.seconds.toFixed(1)} s`);
    return manifest;
  } catch (e) {
    if (v2vPgid) { try { process.kill(-v2vPgid, signal?.aborted ? 'SIGKILL' : 'SIGTERM'); } catch { /* gone */ } }
    await endProcesses(needles());
    if (signal?.aborted) throw abortError(signal);
    throw e;
  } finally {
    signal?.removeEventListener('abort', onSignal);
    unregister();
    await rm(build, { recursive: true, force: true });
    if (scratch) await rm(scratch, { recursive: true, force: true });
    await unpin();
  }
}

