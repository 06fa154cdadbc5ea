import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { guestfsEnv, listenSocketPath, waitForListenSocket } from '../../src/target/guestfs.ts';

test('guestfish --listen puts its socket where listenSocketPath says (libguestfs on this machine)', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-gfsock-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const disk = join(dir, 'disk.img');
  writeFileSync(disk, Buffer.alloc(1 << 20));
  const env = { ...guestfsEnv(), TMPDIR: dir };
  // stderr not piped: the server keeps it open, so a pipe would never reach EOF.
  const out = execFileSync('guestfish', ['--listen', '--ro', '--format=raw', '-a', disk], { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const pid = Number(/GUESTFISH_PID=(\d+)/.exec(out)?.[1]);
  assert.ok(pid > 0, out);
  try {
    for (let i = 0; i < 250; i++) { try { if (statSync(listenSocketPath(pid)).isSocket()) break; } catch { /* not yet */ } execFileSync('sleep', ['0.02']); }
    assert.ok(statSync(listenSocketPath(pid)).isSocket(), `no socket at ${listenSocketPath(pid)}`);
  } finally {
    execFileSync('guestfish', [`--remote=${pid}`, '--', 'exit'], { env, stdio: 'ignore' });
  }
});

test('waitForListenSocket waits for a socket made late, and fails at once, naming the pid, when the server is gone', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-gfsock-'));
  const path = join(dir, 'socket-late');
  const server = createServer();
  t.after(() => { server.close(); rmSync(dir, { recursive: true, force: true }); });
  // A stale socket file (bound, never listening, as a killed server leaves it) does not count.
  execFileSync('python3', ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', path]);
  assert.ok(statSync(path).isSocket());
  const t0 = Date.now();
  setTimeout(() => { rmSync(path); server.listen(path); }, 300);
  await waitForListenSocket(path, process.pid, 10_000);
  assert.ok(Date.now() - t0 >= 280, 'it returned before the socket existed');

  const gone = spawn('true');
  await new Promise((r) => gone.once('exit', r));
  const t1 = Date.now();
  await assert.rejects(waitForListenSocket(join(dir, 'never'), gone.pid!, 10_000), new RegExp(`pid ${gone.pid}\\) exited before it made its socket`));
  assert.ok(Date.now() - t1 < 2000, 'a dead server is noticed at once, not at the timeout');

  await assert.rejects(waitForListenSocket(join(dir, 'never'), process.pid, 200), /made no socket .* within 0.2 s/);
});
