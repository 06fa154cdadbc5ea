/** agent.json: every invalid field is refused with the file, the field and the fix; a valid file parses. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadAgentConfig, parseAgentConfig, proxyUrl } from '../../src/agent/config.ts';

const FP = 'AB:'.repeat(31) + 'AB';

test('a valid agent.json parses, and its proxy becomes the proxy URL', () => {
  const c = parseAgentConfig({
    receiver: '10.0.0.5:8080', fingerprint: FP, connector: { url: 'https://conn:8091', fingerprint: FP, tokenFile: '/etc/vmlift/agent.token' },
    proxy: { ip: '10.0.0.1', port: 3128, user: 'mig', passwordFile: '/etc/vmlift/proxy-password' }, devices: ['/dev/sda', '/dev/sdb'], agentId: 'web02', ignoreCheck: true,
  });
  assert.deepEqual(c.devices, ['/dev/sda', '/dev/sdb']);
  assert.equal(proxyUrl(c.proxy!), 'http://mig@10.0.0.1:3128');
  assert.equal(c.ignoreCheck, true);
});

test('each invalid field is named, with its fix', () => {
  const cases: [unknown, RegExp, RegExp][] = [
    [[], /"\(top level\)" must be a JSON object/, /write an object/],
    [{ recevier: 'x' }, /"recevier" is not a known field/, /the fields are receiver, fingerprint/],
    [{ receiver: 'https://rx:8080' }, /"receiver" is not host\[:port\]/, /no scheme/],
    [{ fingerprint: 'abc' }, /"fingerprint" is not a SHA-256 fingerprint/, /vmlift receiver info/],
    [{ connector: { url: 'http://c:8091' } }, /"connector\.url" must be an https:\/\/ URL/, /https:\/\/CONNECTOR:8091/],
    [{ connector: { url: 'https://c', token: 'x' } }, /"connector\.token" is not a known field/, /holds url, fingerprint, tokenFile/],
    [{ proxy: { ip: '10.0.0.1', port: 70000 } }, /"proxy\.port" must be a port number 1\.\.65535, got 70000/, /e\.g\. 3128/],
    [{ proxy: { port: 3128 } }, /"proxy\.ip" must be a non-empty string/, /"proxy\.ip"/],
    [{ devices: [] }, /"devices" must be a non-empty array/, /\["\/dev\/sda", "\/dev\/sdb"\]/],
    [{ devices: ['sda'] }, /"devices\[0\]" must be an absolute path/, /"\/dev\/sda"/],
    [{ agentId: 'Web02' }, /"agentId" must be lowercase/, /"web02"/],
    [{ ignoreCheck: 'yes' }, /"ignoreCheck" must be true or false/, /without quotes/],
  ];
  for (const [raw, message, fix] of cases) {
    assert.throws(() => parseAgentConfig(raw, '/etc/vmlift/agent.json'), (e: Error & { code?: string; fix?: string }) => {
      assert.equal(e.code, 'AGENT_CONFIG');
      assert.match(e.message, /^\/etc\/vmlift\/agent\.json: /);
      assert.match(e.message, message);
      assert.match(e.fix ?? '', fix);
      return true;
    }, JSON.stringify(raw));
  }
});

test('a file that is not JSON, and a named file that is missing, are refused; a missing default file is an empty config', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-agent-config-'));
  try {
    writeFileSync(join(dir, 'a.json'), '{"devices": ["/dev/sda"],}');
    await assert.rejects(loadAgentConfig(join(dir, 'a.json')), (e: Error & { code?: string; fix?: string }) => e.code === 'AGENT_CONFIG' && /is not valid JSON/.test(e.message) && /fix the JSON syntax/.test(e.fix ?? ''));
    await assert.rejects(loadAgentConfig(join(dir, 'missing.json')), (e: Error & { code?: string }) => e.code === 'AGENT_CONFIG' && /cannot read the agent config/.test(e.message));
    const saved = process.env.VMLIFT_AGENT_CONFIG;
    delete process.env.VMLIFT_AGENT_CONFIG;
    try {
      const r = await loadAgentConfig(undefined);
      if (!r.found) assert.deepEqual(r.config, {});
    } finally { if (saved !== undefined) process.env.VMLIFT_AGENT_CONFIG = saved; }
  } finally { rmSync(dir, { recursive: true, force: true }); }
});

test('agent sync takes its receiver, fingerprint, code, devices and state from agent.json; a flag overrides a field', async () => {
  const { Receiver, vmlift, killChildren } = await import('./harness.ts');
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-agent-config-sync-'));
  try {
    const r = await Receiver.start(join(dir, 'rx'));
    const device = join(dir, 'disk.img');
    writeFileSync(device, Buffer.alloc(4 << 20, 7));
    writeFileSync(join(dir, 'code'), `${r.code}\n`);
    const config = join(dir, 'agent.json');
    writeFileSync(config, JSON.stringify({ receiver: r.address, fingerprint: r.fingerprint, codeFile: join(dir, 'code'), devices: [join(dir, 'nope.img')], stateDir: join(dir, 'state'), sourceId: 'cfg01' }));
    // The file names a device that is not there: the flag's device replaces it.
    const out = await vmlift(['agent', 'sync', '--config', config, '--device', device, '--once', '--json']);
    assert.equal(out.code, 0, out.stderr);
    const cycle = out.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { type: string; imageId?: string; disks?: { label: string }[] }).find((l) => l.type === 'cycle')!;
    assert.ok(cycle.imageId);
    assert.equal(cycle.disks![0]!.label, device);
    const missing = await vmlift(['agent', 'sync', '--config', config, '--once']);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /nope\.img/);
    await r.stop();
  } finally {
    await killChildren();
    rmSync(dir, { recursive: true, force: true });
  }
});
