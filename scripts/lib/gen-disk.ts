/**
 * Disk images with real-looking content for the demo, tests and benchmarks: regions of text
 * (from /usr/share/doc), random bytes (AES-CTR keystream: fast, incompressible, never repeats)
 * and holes, at random offsets from a seeded generator. Also: scattered block changes.
 *
 * CLI: node --import tsx scripts/lib/gen-disk.ts OUT SIZE_MIB [--data 0.6] [--text 0.5] [--seed N]
 *      node --import tsx scripts/lib/gen-disk.ts --change OUT FRACTION [--seed N]
 */
import { createCipheriv, createHash } from 'node:crypto';
import { open, readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';

export const BLOCK = 4096;

/** Small deterministic PRNG (mulberry32). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

let corpus: Buffer | undefined;
/** Up to 16 MiB of plain text from /usr/share/doc (a fixed filler when there is none). */
export async function textCorpus(): Promise<Buffer> {
  if (corpus) return corpus;
  const parts: Buffer[] = [];
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    let names: string[];
    try { names = (await readdir(dir)).sort(); } catch { return; }
    for (const n of names) {
      if (total >= 16 << 20) return;
      const p = join(dir, n);
      const st = await stat(p).catch(() => null);
      if (!st) continue;
      if (st.isDirectory()) await walk(p);
      else if (st.isFile() && !n.endsWith('.gz') && st.size > 0 && st.size < 4 << 20) {
        const b = await readFile(p).catch(() => null);
        if (b) { parts.push(b); total += b.length; }
      }
    }
  };
  await walk('/usr/share/doc');
  if (total < 1 << 20) parts.push(Buffer.from('vmlift test text: the quick brown fox jumps over the lazy dog.\n'.repeat(20000)));
  corpus = Buffer.concat(parts);
  return corpus;
}

/** A stream of incompressible bytes that never repeats (AES-128-CTR keystream of `seed`). */
export function randomStream(seed: number): (n: number) => Buffer {
  const key = createHash('sha256').update(`vmlift-gen-${seed}`).digest().subarray(0, 16);
  const c = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  return (n) => c.update(Buffer.alloc(n));
}

export interface GenOptions {
  path: string;
  size: number;
  /** Fraction of the disk that is allocated (the rest are holes). Default 0.6. */
  dataFraction?: number;
  /** Of the allocated regions, the fraction that is text (the rest random). Default 0.5. */
  textFraction?: number;
  seed?: number;
  /** Largest region (default 4 MiB). */
  maxRegion?: number;
}

/** Write a sparse disk image; returns the allocated bytes written. */
export async function generateDisk(o: GenOptions): Promise<number> {
  const rnd = prng(o.seed ?? 1);
  const rand = randomStream(o.seed ?? 1);
  const text = await textCorpus();
  const dataFraction = o.dataFraction ?? 0.6;
  const textFraction = o.textFraction ?? 0.5;
  const maxBlocks = Math.max(1, Math.floor((o.maxRegion ?? 4 << 20) / BLOCK));
  const fh = await open(o.path, 'w');
  let written = 0;
  try {
    await fh.truncate(o.size);
    let pos = 0;
    while (pos < o.size) {
      const len = Math.min(o.size - pos, (1 + Math.floor(rnd() * maxBlocks)) * BLOCK);
      if (rnd() < dataFraction) {
        for (let at = 0; at < len; at += 8 << 20) {
          const n = Math.min(8 << 20, len - at);
          let buf: Buffer;
          if (rnd() < textFraction) {
            buf = Buffer.allocUnsafe(n);
            let filled = 0;
            while (filled < n) {
              const start = Math.floor(rnd() * (text.length - 1));
              filled += text.copy(buf, filled, start, Math.min(text.length, start + (n - filled)));
            }
          } else {
            buf = rand(n);
          }
          await fh.write(buf, 0, n, pos + at);
          written += n;
        }
      }
      pos += len;
    }
  } finally {
    await fh.close();
  }
  return written;
}

/**
 * Overwrite `fraction` of the disk's 4 KiB blocks, chosen at random offsets (distinct blocks),
 * with new random data. Returns the changed block offsets (sorted) and changed bytes.
 */
export async function changeBlocks(path: string, fraction: number, seed = 2): Promise<{ blocks: number[]; bytes: number }> {
  const size = (await stat(path)).size;
  const total = Math.floor(size / BLOCK);
  const want = Math.max(1, Math.round(total * fraction));
  const rnd = prng(seed);
  const rand = randomStream(seed + 1000);
  const picked = new Set<number>();
  while (picked.size < want) picked.add(Math.floor(rnd() * total));
  const blocks = [...picked].sort((a, b) => a - b);
  const fh = await open(path, 'r+');
  try {
    for (const b of blocks) await fh.write(rand(BLOCK), 0, BLOCK, b * BLOCK);
    await fh.sync();
  } finally {
    await fh.close();
  }
  return { blocks: blocks.map((b) => b * BLOCK), bytes: blocks.length * BLOCK };
}

/** SHA-256 (hex) of a whole file. */
export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(8 << 20);
    let pos = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  const opt = (name: string, def: number): number => {
    const i = args.indexOf(name);
    return i >= 0 ? Number(args[i + 1]) : def;
  };
  if (args[0] === '--change') {
    const r = await changeBlocks(args[1]!, Number(args[2]), opt('--seed', 2));
    process.stdout.write(`${JSON.stringify({ changedBlocks: r.blocks.length, changedBytes: r.bytes })}\n`);
  } else {
    const size = Number(args[1]) * 1024 * 1024;
    const written = await generateDisk({ path: args[0]!, size, dataFraction: opt('--data', 0.6), textFraction: opt('--text', 0.5), seed: opt('--seed', 1) });
    process.stdout.write(`${JSON.stringify({ path: args[0], size, allocatedBytes: written })}\n`);
  }
}
