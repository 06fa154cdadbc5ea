/**
 * The lab's real guest: a bootable Debian disk built once by lab/guest/build.sh (cached under
 * ~/.cache/vmlift/guest-<recipe hash>/disk.raw), and file writes into a guest's filesystem made
 * with libguestfs over the lab's writable live-disk NBD export, so they reach the disk as the
 * block writes that change tracking reports.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { PROJECT_ROOT } from '../src/util/root.ts';

const buildScript = join(PROJECT_ROOT, 'lab', 'guest', 'build.sh');

/** libguestfs without KVM (unusable on these machines) and without libvirt. */
export function guestfsEnv(): NodeJS.ProcessEnv {
  return { ...process.env, LIBGUESTFS_BACKEND: process.env.LIBGUESTFS_BACKEND ?? 'direct',
    LIBGUESTFS_BACKEND_SETTINGS: process.env.LIBGUESTFS_BACKEND_SETTINGS ?? 'force_tcg' };
}

/** Path of the cached guest disk, building it first (minutes, once per machine and recipe). */
export async function buildGuest(): Promise<string> {
  const { stdout } = await promisify(execFile)('bash', [buildScript], { maxBuffer: 16 << 20 });
  const path = stdout.trim().split('\n').pop() ?? '';
  if (!path.endsWith('disk.raw')) throw new Error(`lab/guest/build.sh printed no disk path: ${stdout.slice(-500)}`);
  return path;
}

/** Runs guestfish commands (one per line, on stdin) against a disk URI or file, read-write. */
export async function guestfish(disk: string, commands: string, opts: { format?: string; inspect?: boolean } = {}): Promise<string> {
  const args = ['--rw', `--format=${opts.format ?? 'raw'}`, '-a', disk];
  if (opts.inspect !== false) args.push('-i');
  return new Promise((resolve, reject) => {
    const child = spawn('guestfish', args, { env: guestfsEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout.on('data', (b) => { out += b; });
    child.stderr.on('data', (b) => { err += b; });
    child.on('error', reject);
    child.on('close', (code) => code === 0 ? resolve(out)
      : reject(new Error(`guestfish on ${disk} exited ${code}: ${err.trim().slice(-1500)}`)));
    child.stdin.end(commands);
  });
}

/** Writes `content` to `path` in the filesystem of the guest on `disk` (an nbd:// URI or a raw file). */
export async function writeGuestFile(disk: string, path: string, content: string | Buffer): Promise<void> {
  if (!path.startsWith('/') || /[\s"]/.test(path)) throw new Error(`guest path ${JSON.stringify(path)} must be absolute, without spaces or quotes`);
  const tmp = await mkdtemp(join(tmpdir(), 'vmlift-guest-write-'));
  try {
    const local = join(tmp, 'content');
    await writeFile(local, content);
    const dir = path.slice(0, path.lastIndexOf('/')) || '/';
    await guestfish(disk, `mkdir-p ${dir}\nupload ${local} ${path}\nsync\n`);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
