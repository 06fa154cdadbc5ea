/**
 * Test and CLI helper API of the lab vCenter (lab/*.go, built by lab/build.sh).
 *
 *   const lab = await startLab({ dir, vms: 8 });         // foreground child, dies with this process
 *   lab.url / lab.user / lab.passwordFile / lab.thumbprint (SHA-256) / lab.thumbprintSha1
 *   await lab.write('vm-0001', 2000, offset, bytes);      // guest write onto the live disk
 *   await lab.read('vm-0001', 2000, offset, len, snapRef) // bytes of a snapshot's view (or live)
 *   await lab.nbdExport('vm-0001', snapRef, 2000)         // { uri: 'nbd://127.0.0.1:PORT', ... }
 *   startLab({ dir, vddkMap: true }); lab.vddkMapFile     // snapshot views for the VDDK double (lab_map=)
 *   lab.folderUrl('vm-0001/vm-0001-flat.vmdk')            // datastore URL (needs a session cookie)
 *   await lab.addDisk('vm-0001', 2001, 8 << 20); await lab.removeDisk('vm-0001', 2001);
 *   await lab.cbtMode('vm-0001', 'whole-disk');           // QueryChangedDiskAreas answers one area: the disk
 *   await lab.injectFault('createSnapshot'); await lab.expireSessions(); await lab.stop();
 *   startLab({ dir, guest: true }); await lab.guestWrite('guest-debian', '/var/lib/app/data', 'x') // real Debian guest (lab/guest.ts)
 */
import { spawn, execFile } from 'node:child_process';
import { readFile, mkdir, open } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { Agent, request } from 'undici';
import { PROJECT_ROOT } from '../src/util/root.ts';
import { buildGuest, writeGuestFile } from './guest.ts';

const here = join(PROJECT_ROOT, 'lab'); // also when compiled to dist/
export const labBinary = join(here, 'build', 'vmlift-lab');

export interface LabDisk {
  key: number;
  /** Descriptor path as vSphere shows it: "[LocalDS_0] vm/vm.vmdk". */
  file: string;
  /** Absolute path of the base flat file on the lab's datastore folder. */
  flatPath: string;
  /** Path of the base flat file relative to the datastore root (for /folder URLs). */
  datastorePath: string;
  capacity: number;
  bus: number;
  unit: number;
  /** The datastore the disk lives on: "LocalDS_0" (VMFS) or "vsanDatastore" (vSAN: no flat file, flatPath is outside the datastore). */
  datastore: string;
}
/** folder, vApp: with `folders`, the VM folder path below the datacenter's vm folder ("Prod/Web") and the vApp holding the VM. */
export interface LabVm { name: string; moref: string; disks: LabDisk[]; folder?: string; vApp?: string }
export interface LabSnapshot { ref: string; name: string; index: number; changeIds: Record<string, string> }

interface LabState {
  url: string; user: string; passwordFile: string; thumbprintSha1: string; thumbprintSha256: string;
  certFile: string; controlUrl: string; token: string; pid: number; datacenter: string; datacenterPath?: string; datastore: string;
  datastoreDir: string; cbtBlockSize: number; vms: LabVm[]; apiType?: string;
}

export type FaultKind = 'createSnapshot' | 'removeSnapshot' | 'reconfigure' | 'removeAllSnapshots' | string;

export class Lab {
  readonly dir: string;
  readonly url: string;
  readonly user: string;
  readonly password: string;
  readonly passwordFile: string;
  /** SHA-256 thumbprint of the lab's certificate (colon-separated hex). */
  readonly thumbprint: string;
  readonly thumbprintSha1: string;
  readonly thumbprintSha256: string;
  readonly certFile: string;
  readonly certPem: string;
  readonly datacenter: string;
  /** The datacenter's inventory path ('DC0', or 'F0/DC0' with dcFolder): the dcPath of /folder URLs. */
  readonly datacenterPath: string;
  readonly datastore: string;
  readonly datastoreDir: string;
  /**
   * Block size the lab tracks changes in (areas are runs of such blocks, or the whole disk under
   * cbtMode 'whole-disk'): tests bound false positives with it; vCenter promises no granularity.
   */
  readonly cbtBlockSize: number;
  readonly vms: LabVm[];
  readonly pid: number;
  /** "VirtualCenter", or "HostAgent" for a lab started with `esx: true` (a standalone ESXi host). */
  readonly apiType: string;
  private readonly controlUrl: string;
  private readonly token: string;
  private readonly agent: Agent;
  private readonly child: import('node:child_process').ChildProcess | undefined;

  constructor(dir: string, s: LabState, password: string, certPem: string, child?: import('node:child_process').ChildProcess) {
    this.dir = dir; this.url = s.url; this.user = s.user; this.password = password; this.passwordFile = s.passwordFile;
    this.thumbprint = s.thumbprintSha256; this.thumbprintSha1 = s.thumbprintSha1; this.thumbprintSha256 = s.thumbprintSha256;
    this.certFile = s.certFile; this.certPem = certPem; this.datacenter = s.datacenter; this.datastore = s.datastore;
    this.datacenterPath = s.datacenterPath || s.datacenter;
    this.datastoreDir = s.datastoreDir; this.cbtBlockSize = s.cbtBlockSize; this.vms = s.vms; this.pid = s.pid; this.apiType = s.apiType ?? 'VirtualCenter';
    this.controlUrl = s.controlUrl; this.token = s.token; this.child = child;
    this.agent = new Agent({ connect: { ca: certPem }, keepAliveTimeout: 1000 });
  }

  /** The VDDK view map (moref, snapshot, disk path -> NBD export), when the lab runs with `vddkMap`: the double's `lab_map=`. */
  get vddkMapFile(): string { return join(this.dir, 'vddk-map.tsv'); }

  vm(name: string): LabVm {
    const v = this.vms.find((x) => x.name === name);
    if (!v) throw new Error(`the lab has no VM ${name}`);
    return v;
  }

  /** https URL of a datastore file, as vCenter serves it (GET with Range; needs the session cookie). */
  folderUrl(datastorePath: string, datastore = this.datastore): string {
    const u = new URL(this.url);
    return `${u.origin}/folder/${datastorePath.split('/').map(encodeURIComponent).join('/')}?dcPath=${encodeURIComponent(this.datacenterPath)}&dsName=${encodeURIComponent(datastore)}`;
  }

  /**
   * The lab's own point-in-time view of a disk at a snapshot (or live), with Range support: what a
   * VDDK or NBD read of that snapshot returns. Lab-internal (loopback, `headers` carry the token);
   * /folder serves only what a datastore holds.
   */
  viewUrl(vm: string, disk: number, snapshot?: string): { url: string; headers: Record<string, string> } {
    const q = new URLSearchParams({ vm, disk: String(disk) });
    if (snapshot) q.set('snapshot', snapshot);
    return { url: `${this.controlUrl}/view?${q}`, headers: { 'x-lab-token': this.token } };
  }

  private async call(op: string, params: Record<string, string | number | undefined>, body?: Buffer, method = 'POST'): Promise<Buffer> {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined) q.set(k, String(v));
    const res = await request(`${this.controlUrl}/${op}?${q}`, {
      method: method as 'POST', body, dispatcher: this.agent, headers: { 'x-lab-token': this.token },
    });
    const buf = Buffer.from(await res.body.arrayBuffer());
    if (res.statusCode !== 200) throw new Error(`lab ${op}: ${res.statusCode} ${buf.toString().trim()}`);
    return buf;
  }

  /** Plays a guest write onto the VM's live disk (goes past any snapshot). */
  async write(vm: string, disk: number, offset: number, data: Buffer): Promise<void> {
    await this.call('write', { vm, disk, offset }, data);
  }

  /** Reads a snapshot's view of a disk (snapshot moref), or the live disk when omitted. */
  async read(vm: string, disk: number, offset: number, length: number, snapshot?: string): Promise<Buffer> {
    return this.call('read', { vm, disk, offset, length, snapshot }, undefined, 'GET');
  }

  /** Starts (once) an nbdkit export of a snapshot's disk, read-only. */
  async nbdExport(vm: string, snapshot: string, disk: number): Promise<{ uri: string; host: string; port: number }> {
    return JSON.parse((await this.call('nbd', { vm, snapshot, disk })).toString());
  }

  async snapshots(vm: string): Promise<LabSnapshot[]> {
    return JSON.parse((await this.call('snapshots', { vm }, undefined, 'GET')).toString()) ?? [];
  }

  /** The next `count` tasks of this kind fail (createSnapshot, removeSnapshot, reconfigure, or a method name). */
  async injectFault(kind: FaultKind, count = 1): Promise<void> { await this.call('fault', { kind, count }); }
  /** Tasks of this kind stay running for `ms` (with progress) before they finish. 0 clears. */
  async delayTasks(kind: FaultKind, ms: number): Promise<void> { await this.call('delay', { kind, ms }); }
  async clearFaults(): Promise<void> { await this.call('clear-faults', {}); }
  /**
   * What the lab served of each disk's data, keyed "VM/key": requests and bytes of its extents over
   * /folder, bytes of its view over /lab/view, NBD exports asked for it. `reset` clears them first.
   */
  async traffic(reset = false): Promise<Record<string, { folderRequests: number; folderBytes: number; viewBytes: number; nbdExports: number }>> {
    return JSON.parse((await this.call('traffic', reset ? { reset: 1 } : {}, undefined, reset ? 'POST' : 'GET')).toString());
  }
  /** Ends every session, as vCenter's idle timeout does. */
  async expireSessions(): Promise<number> { return JSON.parse((await this.call('expire-sessions', {})).toString()).expired; }
  /** A vCenter restart: every session ends and /sdk and /folder answer 503 for `ms` (tasks and inventory stay). */
  async restartVcenter(ms: number): Promise<number> { return JSON.parse((await this.call('restart', { ms })).toString()).expired; }
  /** Resets change tracking of a disk (new CBT UUID), as a vMotion or a ctk repair does. */
  async resetCbt(vm: string, disk: number): Promise<void> { await this.call('cbt-reset', { vm, disk }); }
  /** How QueryChangedDiskAreas answers for the VM's disks (or one): coalesced runs (default), or one area covering the whole disk. */
  async cbtMode(vm: string, mode: 'runs' | 'whole-disk', disk?: number): Promise<void> { await this.call('cbt-mode', { vm, mode, disk }); }

  /**
   * Attaches a new disk (fresh backing UUID, some data written) with device key `key`
   * (2000 + 16·bus + unit, on that SCSI bus); `vm(name).disks` follows. The VM must have no snapshot.
   */
  async addDisk(vm: string, key: number, capacity: number): Promise<LabDisk> {
    const d = JSON.parse((await this.call('disk-add', { vm, disk: key, capacity })).toString()) as LabDisk;
    const v = this.vm(vm);
    v.disks = [...v.disks, d].sort((a, b) => a.key - b.key);
    return d;
  }

  /** Detaches a disk from the VM (its file stays); `vm(name).disks` follows. The VM must have no snapshot. */
  async removeDisk(vm: string, key: number): Promise<void> {
    await this.call('disk-remove', { vm, disk: key });
    const v = this.vm(vm);
    v.disks = v.disks.filter((d) => d.key !== key);
  }

  /**
   * Writes a file into the filesystem of the guest on a VM's disk (default: its first), as the running
   * guest would: libguestfs over the lab's writable NBD export of the live disk, so CBT tracks the blocks.
   */
  async guestWrite(vm: string, path: string, content: string | Buffer, disk = this.vm(vm).disks[0]!.key): Promise<void> {
    const { uri } = JSON.parse((await this.call('nbd-live', { vm, disk })).toString()) as { uri: string };
    try {
      await writeGuestFile(uri, path, content);
    } finally {
      await this.call('nbd-live', { vm, disk, stop: 1 }).catch(() => {});
    }
  }

  /** ESXi mode only: "free" makes the host refuse writes (RestrictedVersion) as the free vSphere Hypervisor license does. */
  async setEsxLicense(edition: 'free' | 'licensed'): Promise<void> { await this.call('esx-license', { edition }); }
  /** Objects per RetrievePropertiesEx page when a request sets no maxObjects (default 100; 0: no paging). */
  async pageSize(size: number): Promise<void> { await this.call('page-size', { size }); }
  /**
   * The property (and everything under it, e.g. 'config') of a VM (by name) or of any object (by
   * moref) comes back in missingSet with NoPermission naming `privilege`; a VM's denial covers its snapshots.
   */
  async denyProperty(vmOrRef: string, path: string, privilege = 'System.Read'): Promise<void> {
    await this.call('deny', this.vms.some((v) => v.name === vmOrRef) ? { vm: vmOrRef, path, privilege } : { ref: vmOrRef, path, privilege });
  }
  /** Clears every denyProperty. */
  async allowAll(): Promise<void> { await this.call('allow', {}); }
  /** Reads the VM's disks back from the lab (after a ReconfigVM_Task deviceChange); `vm(name).disks` follows. */
  async refreshDisks(vm: string): Promise<LabDisk[]> {
    const disks = (JSON.parse((await this.call('disks', { vm }, undefined, 'GET')).toString()) as LabDisk[]).sort((a, b) => a.key - b.key);
    this.vm(vm).disks = disks;
    return disks;
  }

  async stop(): Promise<void> {
    await this.agent.close().catch(() => {});
    if (!isAlive(this.pid)) return;
    process.kill(this.pid, 'SIGTERM');
    for (let i = 0; i < 100 && isAlive(this.pid); i++) await sleep(50);
    if (isAlive(this.pid)) process.kill(this.pid, 'SIGKILL');
    void this.child;
  }
}

function isAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Builds the lab binary if its sources changed (cached by source hash). */
export async function buildLab(): Promise<string> {
  await promisify(execFile)(join(here, 'build.sh'), { maxBuffer: 16 << 20 });
  return labBinary;
}

export interface StartLabOptions {
  dir: string;
  /** Plain VMs vm-0001..vm-N besides the seven shaped ones (two-disks, shape-snapshot, shape-independent, shape-vmx04, a vCLS agent, shape-foreign-snapshot, shape-vsan). */
  vms?: number;
  diskMb?: number;
  /** VMFS version LocalDS_0 presents (default 6): 6 gives seSparse deltas, 5 redoLog (VMFSsparse) deltas for disks under 2 TiB. */
  vmfsVersion?: 5 | 6;
  /** Keep running after this process exits (the CLI's `vmlift lab start`). Default: die with this process. */
  detached?: boolean;
  timeoutMs?: number;
  /** A standalone ESXi host instead of a vCenter: HostAgent, ha-datacenter, user root, numeric VM ids, no vCLS VM. */
  esx?: boolean;
  /** Export each snapshot's disks over NBD and publish `vddkMapFile` for the VDDK double (lab/vddk_map.go). */
  vddkMap?: boolean;
  /** RetrievePropertiesEx page size without maxObjects (default 100, as vCenter pages; 0: no paging). */
  pageSize?: number;
  /** Put the datacenter in a folder: its inventory path becomes F0/DC0. */
  dcFolder?: boolean;
  /** Add VMs in nested VM folders: web-01, web-02 (Prod/Web), db-01 (Prod/Db), test-01 (Test), and shop-app in vApp shop (folder Prod). */
  folders?: boolean;
  /** Add VM guest-debian (powered on, one pvscsi disk) holding the real Debian guest; true builds or reuses the cached image (lab/guest/build.sh), a string names a raw image. */
  guest?: boolean | string;
}

export async function startLab(opts: StartLabOptions): Promise<Lab> {
  const dir = resolve(opts.dir);
  await mkdir(dir, { recursive: true });
  await buildLab();
  const args = ['-dir', dir, '-vms', String(opts.vms ?? 8), '-disk-mb', String(opts.diskMb ?? 64)];
  if (opts.vmfsVersion) args.push('-vmfs-version', String(opts.vmfsVersion));
  if (!opts.detached) args.push('-parent-pid', String(process.pid));
  if (opts.esx) args.push('-esx');
  if (opts.vddkMap) args.push('-vddk-map');
  if (opts.pageSize !== undefined) args.push('-page-size', String(opts.pageSize));
  if (opts.dcFolder) args.push('-dc-folder');
  if (opts.folders) args.push('-folders');
  if (opts.guest) args.push('-guest', typeof opts.guest === 'string' ? resolve(opts.guest) : await buildGuest());
  const log = await open(join(dir, 'lab.log'), 'a');
  const child = spawn(labBinary, args, { stdio: ['ignore', log.fd, log.fd], detached: !!opts.detached });
  await log.close();
  if (opts.detached) child.unref();
  let exited: number | null = null;
  child.on('exit', (code) => { exited = code ?? -1; });
  const deadline = Date.now() + (opts.timeoutMs ?? 180_000);
  while (!existsSync(join(dir, 'lab.json'))) {
    if (exited !== null) {
      const text = await readFile(join(dir, 'lab.log'), 'utf8').catch(() => '');
      throw new Error(`the lab exited (${exited}) before it was ready:\n${text.slice(-2000)}`);
    }
    if (Date.now() > deadline) { child.kill('SIGKILL'); throw new Error('the lab did not become ready in time'); }
    await sleep(50);
  }
  return connectLab(dir, child);
}

/** Attaches to a lab started earlier in `dir`. */
export async function connectLab(dir: string, child?: import('node:child_process').ChildProcess): Promise<Lab> {
  const file = join(resolve(dir), 'lab.json');
  let s: LabState;
  try { s = JSON.parse(await readFile(file, 'utf8')); } catch {
    throw new Error(`no running lab in ${dir} (no lab.json)`);
  }
  if (!isAlive(s.pid)) throw new Error(`the lab in ${dir} is not running (pid ${s.pid} is gone)`);
  const password = (await readFile(s.passwordFile, 'utf8')).trim();
  const certPem = await readFile(s.certFile, 'utf8');
  return new Lab(resolve(dir), s, password, certPem, child);
}
