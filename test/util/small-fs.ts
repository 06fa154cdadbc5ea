/**
 * A real small filesystem for disk-full tests: a tmpfs of `sizeMiB` mounted on a fresh temp folder
 * (needs root). `fill` writes a filler file until the filesystem has about `leaveBytes` free;
 * `free` deletes it. `cleanup` unmounts and removes the folder; it is registered with `t.after`
 * and on process exit, so a failing test leaves no mount behind.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statfsSync, openSync, writeSync, closeSync, fsyncSync, unlinkSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

export interface SmallFs {
  dir: string;
  freeBytes(): number;
  /** Write `<dir>/filler` until about `leaveBytes` stay free (ENOSPC ends it early). */
  fill(leaveBytes: number): void;
  /** Delete the filler. */
  unfill(): void;
  cleanup(): void;
}

const mounted = new Set<string>();
process.once('exit', () => { for (const d of mounted) try { execFileSync('umount', ['-l', d]); rmSync(d, { recursive: true, force: true }); } catch { /* best effort */ } });

export function canMount(): boolean {
  return process.getuid?.() === 0;
}

export function smallFs(t: TestContext | null, sizeMiB: number): SmallFs {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-smallfs-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,mode=0700`, 'vmlift-smallfs', dir]);
  mounted.add(dir);
  const filler = join(dir, 'filler');
  const fs: SmallFs = {
    dir,
    freeBytes() { const s = statfsSync(dir); return s.bavail * s.bsize; },
    fill(leaveBytes) {
      const fd = openSync(filler, 'a');
      const block = Buffer.alloc(1 << 20, 0xa5);
      try {
        for (let left = fs.freeBytes() - leaveBytes; left > 0; left = fs.freeBytes() - leaveBytes) {
          try { writeSync(fd, block, 0, Math.min(block.length, left)); } catch (e) { if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break; throw e; }
        }
        fsyncSync(fd);
      } finally { closeSync(fd); }
    },
    unfill() { if (existsSync(filler)) unlinkSync(filler); },
    cleanup() {
      if (!mounted.has(dir)) return;
      mounted.delete(dir);
      try { execFileSync('umount', [dir]); } catch { execFileSync('umount', ['-l', dir]); }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  t?.after(() => fs.cleanup());
  return fs;
}
