/**
 * A guest's serial console as lines: the bytes QEMU forwards from the guest's ttyS0 (and SeaBIOS's
 * text output, mirrored there by its serial console), split into lines with terminal escapes
 * removed, the last N kept, and matched against the markers of a finished boot (a login prompt,
 * systemd's multi-user target) and of a failed one (no bootable device, the initramfs giving up
 * on the root device, a kernel panic). docs/target.md "boot-test" lists the markers.
 */

export type Reached = 'login' | 'multi-user';

export interface ConsoleFailure {
  code: string;
  message: string;
  /** The console line that matched. */
  line: string;
}

interface FailureMarker { code: string; re: RegExp; message: string }

/** Console lines that end a boot as failed at once. Order matters: the first match names the cause. */
export const FAILURE_MARKERS: readonly FailureMarker[] = [
  { code: 'NO_BOOTABLE_DEVICE', re: /No bootable device/, message: 'the BIOS found no bootable disk (the boot sector is zeroed or has no boot signature)' },
  { code: 'NO_OS', re: /Missing operating system|Operating system not found|Error loading operating system|Invalid partition table/,
    message: 'the boot sector found no operating system to start' },
  { code: 'ROOT_NOT_FOUND', re: /Gave up waiting for root (file system )?device|ALERT!\s+\S+ does not exist/,
    message: "the guest's initramfs did not find the root device" },
  { code: 'INITRAMFS_SHELL', re: /^\(initramfs\)/, message: 'the guest stopped in the initramfs emergency shell' },
  { code: 'KERNEL_PANIC', re: /Kernel panic - not syncing/, message: 'the guest kernel panicked' },
  { code: 'EMERGENCY_MODE', re: /You are in emergency mode|Entering emergency mode|Give root password for maintenance/,
    message: 'systemd stopped in emergency mode (a filesystem of fstab did not mount, or the root filesystem is damaged)' },
];

const LOGIN = /(^|\s)\S*login:\s*$/;
const MULTI_USER = /Reached target .*(Multi-User System|multi-user\.target)/;
/** Initramfs-tools' wait for the root device: normal for a moment, a failure when it lasts (ROOTDELAY, 180 s by default). */
export const ROOT_WAIT = /Begin: Waiting for root file system/;
/** What follows a found root device in initramfs-tools, or the root filesystem mounted. */
const ROOT_FOUND = /Will now check root file system|EXT4-fs \([^)]+\): mounted filesystem|XFS \([^)]+\): Mounting|Run \/init as init|systemd\[1\]|Welcome to/;
/** SeaBIOS's last line before it runs the disk's boot sector ("Booting from Hard Disk..."; its serial mirror may double a character, "HHard"). */
export const BIOS_HANDOFF = /^Booting from /;

// CSI and OSC sequences, single-character escapes (ESC c, ESC 7), then other control characters but tab.
// eslint-disable-next-line no-control-regex
const ESCAPES = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-Z\\-_c78=>]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g;

export class SerialConsole {
  private readonly lines: string[] = [];
  private partial = '';
  private bytesSeen = 0;
  private lastOutputAt: number | null = null;
  private rootWaitSince: number | null = null;
  loginAt: number | null = null;
  multiUserAt: number | null = null;
  failure: ConsoleFailure | null = null;
  /** Text a caller waits for (boot-test --expect), also after the login prompt; when and in which line it came. */
  expect: string | null = null;
  expectedAt: number | null = null;
  expectedLine: string | null = null;

  constructor(private readonly keep = 40, private readonly now: () => number = Date.now) {}

  /** Feeds bytes from the console. */
  feed(data: Buffer | string): void {
    const text = data.toString('latin1');
    this.bytesSeen += text.length;
    this.lastOutputAt = this.now();
    const parts = (this.partial + text).split(/\r\n|\n|\r(?!$)/);
    this.partial = parts.pop() ?? '';
    for (const raw of parts) this.line(raw.replace(/\r/g, '').replace(ESCAPES, ''));
    // A prompt stays on its line: "guest-debian login: " has no newline after it.
    const open = this.partial.replace(/\r/g, '').replace(ESCAPES, '');
    if (!this.done && LOGIN.test(open)) this.loginAt = this.now();
    if (!this.done && /^\(initramfs\)/.test(open)) this.fail('INITRAMFS_SHELL', open);
  }

  /** A login prompt or a failure marker was seen (the multi-user target alone may still be followed by a prompt). */
  get done(): boolean { return this.loginAt !== null || this.failure !== null; }
  get reached(): Reached | null { return this.loginAt !== null ? 'login' : this.multiUserAt !== null ? 'multi-user' : null; }
  get sawOutput(): boolean { return this.bytesSeen > 0; }
  get lastOutput(): number | null { return this.lastOutputAt; }

  /** Since when initramfs-tools has been waiting for the root device (null: not waiting). */
  get waitingForRootSince(): number | null { return this.rootWaitSince; }

  /** The last complete line, or the open one when it holds text. */
  get lastLine(): string {
    const open = this.partial.replace(ESCAPES, '').trim();
    return open || (this.lines[this.lines.length - 1] ?? '');
  }

  /** The last lines (the open one too), blank ones dropped. */
  tail(n = this.keep): string[] {
    const open = this.partial.replace(/\r/g, '').replace(ESCAPES, '');
    return [...this.lines, ...(open.trim() ? [open] : [])].filter((l) => l.trim() !== '').slice(-n);
  }

  private line(l: string): void {
    this.lines.push(l);
    if (this.lines.length > this.keep * 4) this.lines.splice(0, this.lines.length - this.keep);
    if (this.expect !== null && this.expectedAt === null && l.includes(this.expect)) { this.expectedAt = this.now(); this.expectedLine = l.trim(); }
    if (this.done) return;
    if (ROOT_WAIT.test(l)) this.rootWaitSince ??= this.now();
    if (ROOT_FOUND.test(l)) this.rootWaitSince = null;
    for (const m of FAILURE_MARKERS) {
      if (m.re.test(l)) { this.fail(m.code, l); return; }
    }
    if (MULTI_USER.test(l)) this.multiUserAt ??= this.now();
    else if (LOGIN.test(l)) this.loginAt = this.now();
  }

  private fail(code: string, line: string): void {
    const m = FAILURE_MARKERS.find((x) => x.code === code)!;
    this.failure = { code, message: m.message, line: line.trim() };
  }
}
