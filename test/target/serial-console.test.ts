/** The console reader on console text as the lab guest, SeaBIOS and initramfs-tools print it (escapes, CR/LF, open prompt lines). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BIOS_HANDOFF, SerialConsole } from '../../src/target/serial-console.ts';

function clock() {
  let t = 1000;
  return { now: () => t, step: (ms: number) => { t += ms; } };
}

test('a login prompt on the still-open line ends the boot; systemd colour escapes are removed; multi-user is noted apart', () => {
  const c = clock();
  const con = new SerialConsole(10, c.now);
  con.feed('\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2)\r\nBooting from Hard Disk...\r\n');
  assert.equal(con.done, false);
  con.feed('[\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mmulti-user.target\x1b[0m - Multi-User System.\r\r\n');
  assert.equal(con.reached, 'multi-user');
  assert.equal(con.done, false, 'a prompt may still follow');
  c.step(5000);
  con.feed('\r\nDebian GNU/Linux 12 guest-debian ttyS0\r\n\r\nguest-debian lo');
  assert.equal(con.done, false);
  con.feed('gin: ');
  assert.equal(con.done, true);
  assert.equal(con.reached, 'login');
  assert.equal(con.loginAt, 6000);
  assert.deepEqual(con.tail(3), ['[  OK  ] Reached target multi-user.target - Multi-User System.', 'Debian GNU/Linux 12 guest-debian ttyS0', 'guest-debian login: ']);
});

test('failure markers: no bootable device, initramfs giving up and its shell, kernel panic; the first one names the cause', () => {
  const cases: [string, string][] = [
    ['Booting from Hard Disk...\r\nBoot failed: not a bootable disk\r\n\r\nNo bootable device.\r\n', 'NO_BOOTABLE_DEVICE'],
    ['Gave up waiting for root file system device.  Common problems:\r\n - Boot args\r\nALERT!  /dev/sda1 does not exist.  Dropping to a shell!\r\n', 'ROOT_NOT_FOUND'],
    ['BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) built-in shell (ash)\r\n(initramfs) ', 'INITRAMFS_SHELL'],
    ['[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\r\n', 'KERNEL_PANIC'],
    ['Missing operating system.\r\n', 'NO_OS'],
    ['You are in emergency mode. After logging in, type "journalctl -xb"\r\n', 'EMERGENCY_MODE'],
  ];
  for (const [text, code] of cases) {
    const con = new SerialConsole();
    con.feed(text);
    assert.equal(con.failure?.code, code, text);
    assert.equal(con.done, true);
    assert.equal(con.reached, null);
  }
  // A login prompt after a failure does not turn it into a pass.
  const con = new SerialConsole();
  con.feed('Kernel panic - not syncing: Attempted to kill init!\r\nfoo login: ');
  assert.equal(con.failure?.code, 'KERNEL_PANIC');
  assert.equal(con.loginAt, null);
});

test('the wait for the root device is timed from "Waiting for root file system" and cleared once the root filesystem is found', () => {
  const c = clock();
  const con = new SerialConsole(10, c.now);
  con.feed('Begin: Running /scripts/local-premount ... done.\r\nBegin: Waiting for root file system ... Begin: Running /scripts/local-block ... done.\r\n');
  assert.equal(con.waitingForRootSince, 1000);
  c.step(3000);
  con.feed('Begin: Running /scripts/local-block ... done.\r\n');
  assert.equal(con.waitingForRootSince, 1000);
  con.feed('done.\r\nBegin: Will now check root file system ... fsck from util-linux 2.38.1\r\n');
  assert.equal(con.waitingForRootSince, null);
  assert.equal(con.failure, null);
});

test('an expected text is found in any line, also after the login prompt, with its time and line', () => {
  let now = 1000;
  const con = new SerialConsole(40, () => now);
  con.expect = 'vmlift-marker: final 42';
  con.feed('guest-debian login: ');
  assert.ok(con.loginAt !== null);
  assert.equal(con.expectedAt, null);
  now = 5000;
  con.feed('\r\n[   31.2] guestfs-firstboot: vmlift-marker: final 42\r\n');
  assert.equal(con.expectedAt, 5000);
  assert.equal(con.expectedLine, '[   31.2] guestfs-firstboot: vmlift-marker: final 42');
  const other = new SerialConsole(40, () => now);
  other.expect = 'vmlift-marker: final 42';
  other.feed('vmlift-marker: final 41\n');
  assert.equal(other.expectedAt, null, 'another text is not the expected one');
});

test('the BIOS hand-over line is known also when the serial mirror doubles a character', () => {
  assert.ok(BIOS_HANDOFF.test('Booting from Hard Disk...'));
  assert.ok(BIOS_HANDOFF.test('Booting from HHard Disk...'));
  assert.ok(!BIOS_HANDOFF.test('Booted from a kernel'));
});
