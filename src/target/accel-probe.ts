/**
 * Whether KVM works here: /dev/kvm can exist and still run no guest (nested virtualisation without
 * the features real-mode BIOS code needs: QEMU then stops with "KVM internal error" and the guest
 * prints nothing). The probe boots a 512-byte boot sector under KVM that prints a marker on the
 * serial console through BIOS calls (int 10h for each character, so the BIOS's interrupt return
 * paths run too); KVM counts as working only when the whole marker arrives within the timeout.
 * The answer is cached per process.
 */
import { spawn } from 'node:child_process';
import { constants, openSync, closeSync, rmSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onAbort } from './abort.ts';
import { killGroup } from './process-group.ts';

export type Accel = 'kvm' | 'tcg';
export interface AccelChoice { accel: Accel; reason: string }

const MARKER = 'VMLIFT-ACCEL-PROBE-OK';

/** The probe's boot sector: for each character of MARKER, `out 0x3f8` and then BIOS teletype (int 10h); then halt. */
export function probeBootSector(): Buffer {
  const code = Buffer.from([
    0x31, 0xc0, 0x8e, 0xd8, // xor ax,ax; mov ds,ax
    0xbe, 0x1d, 0x7c, // mov si, 0x7c1d (the message)
    0xac, 0x84, 0xc0, 0x74, 0x0d, // next: lodsb; test al,al; jz done
    0xba, 0xf8, 0x03, 0xee, // mov dx,0x3f8; out dx,al
    0xb4, 0x0e, 0xbb, 0x07, 0x00, 0xcd, 0x10, // mov ah,0x0e; mov bx,7; int 0x10
    0xeb, 0xee, // jmp next
    0xfa, 0xf4, 0xeb, 0xfd, // done: cli; hlt; jmp hlt
  ]);
  const sector = Buffer.alloc(512);
  code.copy(sector, 0);
  Buffer.from(`${MARKER}\r\n\0`, 'latin1').copy(sector, code.length);
  sector[510] = 0x55; sector[511] = 0xaa;
  return sector;
}

let cached: Promise<AccelChoice> | null = null;

/** KVM when the probe shows it runs a guest, TCG otherwise (cached for the process). */
export function chooseAccel(timeoutMs = 10_000): Promise<AccelChoice> {
  cached ??= probe(timeoutMs);
  return cached;
}

/** A boot under KVM failed the way broken KVM fails: later choices in this process take TCG. */
export function markKvmBroken(reason: string): void {
  cached = Promise.resolve({ accel: 'tcg', reason });
}

async function probe(timeoutMs: number): Promise<AccelChoice> {
  try {
    closeSync(openSync('/dev/kvm', constants.O_RDWR));
  } catch (e) {
    return { accel: 'tcg', reason: `/dev/kvm cannot be opened (${(e as NodeJS.ErrnoException).code}): TCG` };
  }
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-accel-probe-'));
  let pid: number | undefined;
  const unregister = onAbort(() => { if (pid) killGroup(pid, 'SIGKILL'); rmSync(dir, { recursive: true, force: true }); });
  try {
    const img = join(dir, 'probe.img'), out = join(dir, 'serial.log');
    await writeFile(img, probeBootSector());
    await writeFile(out, '');
    // The machine and CPU model a boot test runs (qemu-args.ts): on some nested hosts `-cpu max` makes
    // QEMU abort at once under KVM (it cannot set an MSR the host's KVM refuses) while the default model runs.
    const p = spawn('qemu-system-x86_64', ['-machine', 'pc,accel=kvm', '-cpu', 'max', '-nodefaults', '-no-user-config', '-vga', 'std', '-display', 'none', '-m', '16',
      '-drive', `file=${img},format=raw,if=ide,snapshot=on`, '-serial', `file:${out}`, '-monitor', 'none'],
    { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
    pid = p.pid;
    let err = '';
    p.stderr.on('data', (d: Buffer) => { if (err.length < 4000) err += d.toString(); });
    const exited = new Promise<void>((r) => p.on('close', () => r()));
    let gone = false;
    void exited.then(() => { gone = true; });
    p.on('error', () => { gone = true; });
    const deadline = Date.now() + timeoutMs;
    let seen = '';
    while (Date.now() < deadline && !gone) {
      seen = await readFile(out, 'latin1').catch(() => '');
      if (seen.includes(MARKER)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    if (pid) killGroup(pid, 'SIGKILL');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
    if (seen.includes(MARKER)) return { accel: 'kvm', reason: 'the KVM probe guest printed its marker on the serial console' };
    const msg = err.split('\n').filter((l) => l.trim() && !/host doesn't support requested feature/.test(l)).join('; ');
    const why = /KVM internal error[^\n]*/.exec(err)?.[0] ?? (gone ? `qemu exited${msg ? `: ${msg.slice(0, 300)}` : ''}` : `no marker within ${timeoutMs / 1000} s`);
    return { accel: 'tcg', reason: `KVM does not run guests here (${why}): TCG` };
  } finally {
    unregister();
    await rm(dir, { recursive: true, force: true });
  }
}
