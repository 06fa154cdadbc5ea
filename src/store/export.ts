import { open, readdir, rename, rm, stat } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fsyncDir } from '../util/fsync.ts';
import { StoreError } from './types.ts';
import { writeFully } from '../util/write-fully.ts';
import { crashPoint } from '../util/crash.ts';
import { pidAlive } from './pins.ts';

/** Reads one chunk of an image: its bytes, or null for a hole. */
export type ChunkSource = (i: number) => Promise<Buffer | null>;

const OUTPUT_FIX = 'give --output a file path in an existing folder';

async function checkOutputDir(output: string): Promise<void> {
  const dir = dirname(output);
  const st = await stat(dir).catch(() => null);
  if (!st?.isDirectory()) throw new StoreError('BAD_OUTPUT', `cannot export to ${output}: folder ${dir} does not exist`, { fix: OUTPUT_FIX });
  const o = await stat(output).catch(() => null);
  if (o?.isDirectory()) throw new StoreError('BAD_OUTPUT', `cannot export to ${output}: it is a folder`, { fix: OUTPUT_FIX });
}

function partialName(output: string, ext = ''): string {
  return `${output}.partial-${process.pid}-${randomBytes(4).toString('hex')}${ext}`;
}

/**
 * Removes the partial files of earlier exports to the same output whose process is gone (killed
 * half-way: nothing else would ever remove them). Those of a live export are left alone.
 */
async function removeDeadPartials(output: string): Promise<void> {
  const dir = dirname(output);
  const prefix = `${basename(output)}.partial-`;
  for (const n of await readdir(dir).catch(() => [] as string[])) {
    if (!n.startsWith(prefix)) continue;
    const m = /^([0-9]+)-[0-9a-f]{8}(\.raw)?$/.exec(n.slice(prefix.length));
    if (m && !pidAlive(Number(m[1]))) await rm(join(dir, n), { force: true });
  }
}

/** Write a sparse raw file: holes are never written (the file is sized with ftruncate first). */
async function writeRaw(path: string, capacity: number, chunkSize: number, slots: number, read: ChunkSource): Promise<void> {
  const fh = await open(path, 'wx', 0o600);
  try {
    await fh.truncate(capacity);
    const depth = 4;
    let next = 0;
    const worker = async () => {
      for (;;) {
        const i = next++;
        if (i >= slots) return;
        const data = await read(i);
        if (!data) continue;
        const len = Math.min(chunkSize, capacity - i * chunkSize);
        await writeFully(fh, data, i * chunkSize, Math.min(len, data.length));
        crashPoint('store:export');
      }
    };
    await Promise.all(Array.from({ length: depth }, worker));
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function runQemuImg(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn('qemu-img', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d: Buffer) => { if (err.length < 4000) err += d.toString(); });
    p.on('error', (e) => reject((e as NodeJS.ErrnoException).code === 'ENOENT'
      ? new StoreError('QEMU_IMG_MISSING', 'qemu-img is not installed (needed for qcow2/vmdk export); install Debian package qemu-utils',
        { fix: 'install qemu-img (Debian: apt-get install qemu-utils), or export --format raw' })
      : e));
    p.on('close', (code) => code === 0 ? resolve() : reject(new StoreError('QEMU_IMG_FAILED', `qemu-img ${args[0]} failed (exit ${code}): ${err.trim()}`,
      { fix: 'check free space in the output folder and the qemu-img message above' })));
  });
}

/**
 * Export a disk to `output` in `format`. The result appears at `output` only complete (rename of a
 * `.partial-` file in the same folder); on any error nothing is left behind.
 */
export async function exportDisk(output: string, format: 'raw' | 'qcow2' | 'vmdk', capacity: number, chunkSize: number, read: ChunkSource): Promise<void> {
  if (format !== 'raw' && format !== 'qcow2' && format !== 'vmdk') {
    throw new StoreError('BAD_FORMAT', `unknown export format ${JSON.stringify(format)}: use raw, qcow2 or vmdk`, { fix: 'use --format raw, qcow2 or vmdk' });
  }
  await checkOutputDir(output);
  await removeDeadPartials(output);
  const slots = Math.ceil(capacity / chunkSize);
  const raw = partialName(output, format === 'raw' ? '' : '.raw');
  const conv = format === 'raw' ? null : partialName(output);
  try {
    await writeRaw(raw, capacity, chunkSize, slots, read);
    if (conv) {
      const fmtOpts = format === 'vmdk' ? ['-o', 'subformat=monolithicSparse'] : [];
      await runQemuImg(['convert', '-f', 'raw', '-O', format, ...fmtOpts, raw, conv]);
      const fh = await open(conv, 'r');
      try { await fh.sync(); } finally { await fh.close(); }
      await rm(raw, { force: true });
    }
    await rename(conv ?? raw, output);
    await fsyncDir(dirname(output));
  } catch (e) {
    await rm(raw, { force: true });
    if (conv) await rm(conv, { force: true });
    throw e;
  }
}
