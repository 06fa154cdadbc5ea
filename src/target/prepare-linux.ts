/**
 * What vmlift changes in a Linux guest's overlay before virt-v2v-in-place runs, for the two things
 * Debian's virt-v2v 2.2 cannot deal with by itself:
 * - an extlinux-only guest: virt-v2v finds kernels and remaps devices only through a GRUB config
 *   ("no bootloader detected" otherwise). vmlift points extlinux's root= at the root filesystem's
 *   UUID (a name that holds on any bus) and writes a GRUB-legacy menu.lst with the same entries,
 *   which virt-v2v reads through Augeas; the shim is removed after the conversion.
 * - initramfs-tools hooks that delete virtio modules from every initramfs built (as images made for
 *   VMware may carry): virt-v2v's rebuilt initramfs would lack virtio again. Such a hook is moved to
 *   `/etc/initramfs-tools/<hook>.disabled-by-vmlift`, not executable, and stays so: the next
 *   initramfs the guest builds must keep virtio too.
 */
import type { Guestfs } from './guestfs.ts';
import type { InspectReport } from './inspect.ts';

export const MENU_LST_SHIM = '/boot/grub/menu.lst';
const SHIM_MARK = '# written by vmlift image convert for virt-v2v (extlinux boots this guest); removed after the conversion';

export interface Prepared {
  /** One line per change, for convert.json. */
  changes: string[];
  /** The menu.lst shim was written: remove it from the converted disk. */
  shim: boolean;
}

interface ExtlinuxEntry { label: string; kernel: string; initrd: string | null; append: string }

export function parseExtlinux(text: string): { entries: ExtlinuxEntry[]; default: string | null } {
  const entries: ExtlinuxEntry[] = [];
  let def: string | null = null;
  let cur: ExtlinuxEntry | null = null;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const m = /^(\S+)\s*(.*)$/.exec(line);
    if (!m || line.startsWith('#')) continue;
    const key = m[1]!.toUpperCase(), val = m[2]!.trim();
    if (key === 'DEFAULT') def = val;
    else if (key === 'LABEL') entries.push(cur = { label: val, kernel: '', initrd: null, append: '' });
    else if (cur && (key === 'LINUX' || key === 'KERNEL')) cur.kernel = val;
    else if (cur && key === 'INITRD') cur.initrd = val;
    else if (cur && key === 'APPEND') cur.append = val;
  }
  return { entries: entries.filter((e) => e.kernel), default: def };
}

/** root=/dev/sdXN (or hdXN) → root=UUID=… of that filesystem; other parameters unchanged. */
export function rootByUuid(text: string, r: InspectReport): { text: string; changed: string[] } {
  const changed: string[] = [];
  const out = text.replace(/\broot=\/dev\/(sd|hd|xvd)([a-z]+)(\d+)\b/g, (all, _kind: string, letters: string, part: string) => {
    const fs = r.filesystems.find((f) => f.device === `/dev/sd${letters}${part}`);
    if (!fs?.uuid) return all;
    changed.push(`${all} → root=UUID=${fs.uuid}`);
    return `root=UUID=${fs.uuid}`;
  });
  return { text: out, changed };
}

/** The menu.lst shim: one GRUB-legacy entry per extlinux entry, the default first. */
export function menuLst(entries: ExtlinuxEntry[], def: string | null): string {
  const sorted = [...entries].sort((a, b) => Number(b.label === def) - Number(a.label === def));
  return [SHIM_MARK, 'default 0', 'timeout 1', ...sorted.flatMap((e) => [
    `title ${e.label}`, '  root (hd0,0)', `  kernel ${e.kernel}${e.append ? ` ${e.append}` : ''}`, ...(e.initrd ? [`  initrd ${e.initrd}`] : [])])].join('\n') + '\n';
}

/** Mounts the guest's filesystems read-write (inspection left them read-only). */
export async function mountRw(g: Guestfs, root: string): Promise<void> {
  await g.cmd('umount-all');
  const mounts = (await g.lines('inspect-get-mountpoints', root)).map((l) => l.split(': ') as [string, string])
    .sort((a, b) => a[0].length - b[0].length);
  for (const [mp, dev] of mounts) await g.tryCmd('mount', dev, mp);
}

/** Prepares a Linux guest's overlay (open read-write in `g`, inspected as `r`) for virt-v2v-in-place. */
export async function prepareLinux(g: Guestfs, r: InspectReport): Promise<Prepared> {
  const changes: string[] = [];
  let shim = false;
  await mountRw(g, r.os!.root);

  for (const hook of await g.lines('glob-expand', '/etc/initramfs-tools/hooks/*')) {
    if (hook.includes('.')) continue;
    const text = (await g.tryCmd('cat', hook)) ?? '';
    if (/virtio/.test(text) && /(-delete\b|\brm\s)/.test(text)) {
      // Out of the hooks folder and not executable: initramfs-tools runs any executable there whose name has only [A-Za-z0-9._-].
      const aside = `/etc/initramfs-tools/${hook.split('/').pop()}.disabled-by-vmlift`;
      await g.cmd('mv', hook, aside);
      await g.cmd('chmod', '0644', aside);
      changes.push(`disabled the initramfs hook ${hook}, which deletes virtio modules (moved to ${aside}, not executable)`);
    }
  }

  if (r.bootloader?.type === 'extlinux' && r.bootloader.config) {
    const cfg = r.bootloader.config;
    const text = await g.cmd('cat', cfg);
    const fixed = rootByUuid(text, r);
    if (fixed.changed.length) {
      await g.cmd('write', cfg, fixed.text);
      changes.push(`${cfg}: ${[...new Set(fixed.changed)].join(', ')}`);
    }
    const { entries, default: def } = parseExtlinux(fixed.text);
    const hasGrub = (await g.tryCmd('is-file', MENU_LST_SHIM))?.trim() === 'true' || (await g.tryCmd('is-file', '/boot/grub/grub.cfg'))?.trim() === 'true';
    if (entries.length && !hasGrub) {
      await g.cmd('mkdir-p', '/boot/grub');
      await g.cmd('write', MENU_LST_SHIM, menuLst(entries, def));
      shim = true;
      changes.push(`wrote ${MENU_LST_SHIM} from ${cfg} for virt-v2v (it reads no extlinux configuration); removed after the conversion`);
    }
  }
  await g.cmd('umount-all');
  return { changes, shim };
}

/**
 * After the conversion: the shim goes (only called when vmlift wrote it: the guest had no menu.lst;
 * virt-v2v rewrites it through Augeas, so its content is not ours any more). Returns whether it was there.
 */
export async function removeShim(g: Guestfs, root: string): Promise<boolean> {
  await g.cmd('inspect-os'); // a fresh session knows no mountpoints before it inspects
  await mountRw(g, root);
  const there = (await g.tryCmd('is-file', MENU_LST_SHIM))?.trim() === 'true';
  if (there) await g.cmd('rm', MENU_LST_SHIM);
  await g.cmd('umount-all');
  return there;
}
