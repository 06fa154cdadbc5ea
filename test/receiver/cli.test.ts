import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';

const run = promisify(execFile);
const bin = join(process.cwd(), 'bin/vmlift');
const dirs: string[] = [];
after(async () => { for (const d of dirs) await rm(d, { recursive: true, force: true }); });

async function vmlift(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(bin, args, { env: { ...process.env, VMLIFT_LOG_LEVEL: 'warn' } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, stdout: x.stdout, stderr: x.stderr };
  }
}

test('receiver serve / info / code', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vmlift-rxcli-'));
  dirs.push(dir);
  const dataDir = join(dir, 'rx');

  const missing = await vmlift(['receiver', 'info', '--data-dir', dataDir]);
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, /holds no receiver[\s\S]*fix: check --data-dir/);

  const child = spawn(bin, ['receiver', 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1', '--control-port', '0', '--data-port', '0', '--json'],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, VMLIFT_LOG_LEVEL: 'warn' } });
  try {
    const facts = JSON.parse(await new Promise<string>((r) => createInterface({ input: child.stdout! }).once('line', r))) as
      { controlPort: number; dataPort: number; fingerprint: string; activationCode: { code: string; quota: number; expiresAt: string } };
    assert.ok(facts.controlPort > 0 && facts.dataPort > 0 && facts.controlPort !== facts.dataPort, 'actual ports printed for port 0');
    assert.match(facts.fingerprint, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
    assert.equal(facts.activationCode.quota, 200);
    const days = (Date.parse(facts.activationCode.expiresAt) - Date.now()) / 86400_000;
    assert.ok(days > 89.9 && days <= 90, `valid 90 days (${days})`);
    assert.equal((await stat(join(dataDir, 'tls', 'key.pem'))).mode & 0o077, 0, 'the key is private');

    const info = JSON.parse((await vmlift(['receiver', 'info', '--data-dir', dataDir, '--json'])).stdout) as { fingerprint: string; codes: { code: string; state: string }[] };
    assert.equal(info.fingerprint, facts.fingerprint);
    assert.deepEqual(info.codes.map((c) => [c.code, c.state]), [[facts.activationCode.code, 'valid']]);

    const made = await vmlift(['receiver', 'code', '--data-dir', dataDir, '--quota', '3', '--days', '2', '--json']);
    assert.equal(made.code, 0);
    const c = JSON.parse(made.stdout) as { code: string; quota: number };
    assert.equal(c.quota, 3);
    assert.notEqual(c.code, facts.activationCode.code);
    for (const [args, msg] of [[['--quota', '1001'], /quota 1001 is outside 1..1000/], [['--days', '0'], /validity 0 days is outside 1..90/], [['--quota', 'x'], /is not a whole number/]] as const) {
      const r = await vmlift(['receiver', 'code', '--data-dir', dataDir, ...args]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, msg);
      assert.match(r.stderr, /fix: /);
    }
    assert.equal((JSON.parse((await vmlift(['receiver', 'info', '--data-dir', dataDir, '--json'])).stdout) as { codes: unknown[] }).codes.length, 2);
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
  // a second start keeps the identity and makes no new code
  const again = spawn(bin, ['receiver', 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1', '--control-port', '0', '--data-port', '0', '--json'], { stdio: ['ignore', 'pipe', 'ignore'] });
  try {
    const f2 = JSON.parse(await new Promise<string>((r) => createInterface({ input: again.stdout! }).once('line', r))) as { activationCode: unknown };
    assert.equal(f2.activationCode, null);
  } finally { again.kill('SIGTERM'); await new Promise((r) => again.once('exit', r)); }
});
