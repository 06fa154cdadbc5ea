/** NBD servers the connector starts: real nbdkit on the connector's socket, secrets in files, reaped on every path (also after kill -9). */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { NbdServers, reapLeftoverNbdServers, expandNbdCommand, checkNbdCommand, DEFAULT_NBD_COMMAND } from '../../src/source/nbd-server.ts';
import { UserError } from '../../src/util/errors.ts';
import { makeDiskData, readAll, sha256, tempDir } from './helpers.ts';

const { dir, cleanup } = tempDir('vmlift-nbdsrv-');
after(cleanup);
const image = path.join(dir, 'disk.img');
const data = makeDiskData(6 << 20, 3);
writeFileSync(image, data);
const fileCommand = ['nbdkit', '--unix', '{socket}', '--foreground', '--readonly', 'file', image];

const alive = (pid: number) => { try { process.kill(pid, 0); return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return false; } };
const childrenOf = (pid: number): number[] => readdirSync('/proc').filter((n) => /^\d+$/.test(n)).filter((n) => {
  try { const st = readFileSync(`/proc/${n}/stat`, 'utf8'); return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]) === pid; } catch { return false; }
}).map(Number);
const cmdline = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');

describe('NbdServers', () => {
  it('runs the command on a socket in its folder, reads through the NBD client, keeps the password in a 0600 file, and reaps on close', async () => {
    const nbdDir = path.join(dir, 'nbd1');
    const servers = new NbdServers({ dir: nbdDir, command: [...fileCommand.slice(0, -1), '{file}'] });
    const src = await servers.open({ name: 'web-2000', values: { file: image, user: 'administrator@vsphere.local' }, password: 'pa55-w0rd-secret' });
    const [pid] = servers.pids();
    assert.ok(pid && alive(pid));
    assert.equal(src.transport, 'nbd');
    assert.equal(sha256(await readAll(src)), sha256(data));
    assert.ok(existsSync(path.join(nbdDir, 'web-2000.sock')));
    const pw = path.join(nbdDir, 'web-2000.password');
    assert.equal(readFileSync(pw, 'utf8'), 'pa55-w0rd-secret');
    assert.equal(statSync(pw).mode & 0o777, 0o600);
    assert.equal(statSync(nbdDir).mode & 0o777, 0o700);
    const args = cmdline(pid);
    assert.ok(args.includes(path.join(nbdDir, 'web-2000.sock')) && args.includes(image), 'the placeholders are filled in');
    assert.ok(!args.join(' ').includes('pa55-w0rd-secret'), 'the password is not on the server\'s argv');
    const again = await servers.open({ name: 'web-2000', values: { file: image } });
    assert.ok(existsSync(path.join(nbdDir, 'web-2000.2.sock')), 'a second server of the same disk gets its own socket');
    assert.ok(alive(pid), 'and leaves the first one alone');
    await again.close();
    await src.close();
    assert.equal(alive(pid), false, 'the server is gone after close');
    assert.deepEqual(readdirSync(nbdDir), [], 'socket, pid and password files are removed');
  });

  it('fails clearly, and leaves nothing behind, when the server exits before listening or the default nbdkit has no vddk plugin', async () => {
    const nbdDir = path.join(dir, 'nbd2');
    const bad = new NbdServers({ dir: nbdDir, command: ['nbdkit', '--unix', '{socket}', '--foreground', 'no-such-plugin-here'] });
    await assert.rejects(bad.open({ name: 'db-2000', values: {}, password: 'x' }),
      (e: unknown) => e instanceof UserError && e.code === 'NBD_SERVER_START' && /exited before listening/.test(e.message) && /no-such-plugin-here/.test(e.message) && !!e.fix);
    assert.deepEqual(bad.pids(), []);
    assert.deepEqual(readdirSync(nbdDir), []);
    const def = new NbdServers({ dir: nbdDir });
    assert.equal(def.command, DEFAULT_NBD_COMMAND);
    const avail = await def.available();
    if (avail.ok) return; // an nbdkit with the vddk plugin is installed here
    assert.match(avail.reason, /vddk plugin|not installed/);
    await assert.rejects(def.open({ name: 'db-2000', values: {} }),
      (e: unknown) => e instanceof UserError && e.code === 'NBD_NO_SERVER' && /vddk plugin/.test(e.message) && /nbd.*command/.test(e.fix ?? ''));
  });

  it('kills the servers a kill -9\'d connector left running, at the next start', async () => {
    const nbdDir = path.join(dir, 'nbd3');
    const child = spawn(process.execPath, ['--import', 'tsx', '--no-warnings=ExperimentalWarning', path.join(import.meta.dirname, 'nbd-server-child.ts'), nbdDir, image],
      { stdio: ['ignore', 'pipe', 'inherit'] });
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (b) => { out += b; if (out.includes('\n')) resolve(out); });
      child.on('exit', (c) => reject(new Error(`child exited ${c}`)));
    });
    const { pids } = JSON.parse(line) as { pids: number[] };
    assert.equal(pids.length, 1);
    const nbdkit = childrenOf(pids[0]!);
    assert.equal(nbdkit.length, 1, 'the wrapper runs one nbdkit');
    for (const p of [child.pid!, pids[0]!, ...nbdkit]) assert.ok(!cmdline(p).join(' ').includes('child-secret-pw'), `no password on the argv of ${p}`);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(alive(pids[0]!) && alive(nbdkit[0]!), 'the server outlives a kill -9 of the connector');
    assert.ok(readdirSync(nbdDir).some((f) => f.endsWith('.pid')));
    assert.deepEqual(await reapLeftoverNbdServers(nbdDir), pids);
    assert.equal(alive(pids[0]!), false);
    for (let i = 0; i < 50 && alive(nbdkit[0]!); i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(alive(nbdkit[0]!), false, 'and so is the nbdkit its wrapper started');
    assert.deepEqual(readdirSync(nbdDir), [], 'its socket, pid and password files are gone');
    assert.deepEqual(await reapLeftoverNbdServers(nbdDir), [], 'a second pass finds nothing');
  });

  it('checks templates and drops arguments whose placeholder has no value', () => {
    assert.deepEqual(expandNbdCommand(['a', '--unix', '{socket}', 'port={port}', 'vm=moref={vm}'], { socket: '/s', vm: 'vm-4' }), ['a', '--unix', '/s', 'vm=moref=vm-4']);
    assert.throws(() => checkNbdCommand(['x', '{socket}', '{secret}'], 'nbd.command'), (e: unknown) => e instanceof UserError && e.code === 'BAD_NBD_COMMAND' && /\{secret\}/.test(e.message));
    assert.throws(() => checkNbdCommand(['x'], 'nbd.command'), /never names \{socket\}/);
    assert.throws(() => checkNbdCommand('nbdkit', 'nbd.command'), /array of strings/);
    assert.ok(DEFAULT_NBD_COMMAND.includes('password=+{passwordFile}') && DEFAULT_NBD_COMMAND.includes('maxdata=2M'));
  });
});
