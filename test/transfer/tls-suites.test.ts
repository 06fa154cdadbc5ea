/**
 * The cipher suites of the receiver's ports, the agent hub and the senders' pinned connections, over
 * real sockets: AES-128-GCM between our own ends, the receiver's order deciding, every AEAD suite
 * with forward secrecy accepted, and TLS 1.2 CBC refused although Node's defaults take it.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { connectPinned } from '../../src/transfer/connect.ts';
import { AgentHub } from '../../src/engine/agent-hub.ts';
import { AgentRegistry } from '../../src/engine/agent-registry.ts';
import { loadOrCreateAgentTls } from '../../src/engine/agent-tls.ts';
import { silentLogger } from '../../src/util/log.ts';
import { startTestReceiver, type TestRx } from './helpers.ts';

/** Resolves with the negotiated suite and protocol, or the handshake's error. */
function handshake(port: number, o: tls.ConnectionOptions): Promise<{ cipher: string; protocol: string } | { error: string }> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...o });
    s.once('secureConnect', () => { resolve({ cipher: s.getCipher().name, protocol: s.getProtocol() ?? '' }); s.destroy(); });
    s.once('error', (e) => { resolve({ error: e.message }); s.destroy(); });
  });
}

/** A TLS server with the given options that completes handshakes and leaves the closing to the client. */
async function listen(o: tls.TlsOptions): Promise<{ port: number; close: () => void }> {
  const server = tls.createServer(o, (s) => { s.on('error', () => {}); s.resume(); });
  server.on('tlsClientError', (_e, s) => s.destroy());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as AddressInfo).port, close: () => server.close() };
}

describe('TLS cipher suites', () => {
  let t: TestRx;
  let key: string;
  let cert: string;
  let hub: AgentHub;
  let hubPort: number;
  before(async () => {
    t = await startTestReceiver();
    key = await readFile(join(t.dir, 'rx', 'tls', 'key.pem'), 'utf8');
    cert = await readFile(join(t.dir, 'rx', 'tls', 'cert.pem'), 'utf8');
    hub = new AgentHub({ registry: new AgentRegistry(join(t.dir, 'agents')), logger: silentLogger, tls: await loadOrCreateAgentTls(join(t.dir, 'agent-tls')) });
    hubPort = (await hub.listen(0, '127.0.0.1')).port;
  });
  after(async () => { await hub.close(); await t.close(); });

  it('our sender and our receiver agree on TLS 1.3 AES-128-GCM, on the data and the control port', async () => {
    for (const port of [t.rx.dataPort, t.rx.controlPort]) {
      const s = await connectPinned({ host: '127.0.0.1', port, fingerprint: t.rx.fingerprint });
      try {
        assert.equal(s.getProtocol(), 'TLSv1.3');
        assert.equal(s.getCipher().name, 'TLS_AES_128_GCM_SHA256');
      } finally { s.destroy(); }
    }
  });

  it("the receiver's order decides: a client preferring AES-256-GCM gets AES-128-GCM, on TLS 1.3 and 1.2", async () => {
    const v13 = await handshake(t.rx.dataPort, { ciphers: 'TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256' });
    assert.deepEqual(v13, { cipher: 'TLS_AES_128_GCM_SHA256', protocol: 'TLSv1.3' });
    const v12 = await handshake(t.rx.dataPort, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256' });
    assert.deepEqual(v12, { cipher: 'ECDHE-ECDSA-AES128-GCM-SHA256', protocol: 'TLSv1.2' });
  });

  it('our sender still connects to a server that only offers AES-256-GCM', async () => {
    const only256 = await listen({ key, cert, minVersion: 'TLSv1.3', ciphers: 'TLS_AES_256_GCM_SHA384' });
    try {
      const s = await connectPinned({ host: '127.0.0.1', port: only256.port, fingerprint: t.rx.fingerprint });
      assert.equal(s.getCipher().name, 'TLS_AES_256_GCM_SHA384');
      s.destroy();
    } finally { only256.close(); }
  });

  it("accepts every AEAD suite with forward secrecy, and refuses TLS 1.2 CBC suites that Node's defaults accept, on every vmlift port", async () => {
    const nodeDefaults = await listen({ key, cert, minVersion: 'TLSv1.2' });
    try {
      const clients: [string, tls.ConnectionOptions, boolean][] = [
        ['only TLS_AES_256_GCM_SHA384', { ciphers: 'TLS_AES_256_GCM_SHA384' }, true],
        ['only TLS_CHACHA20_POLY1305_SHA256', { ciphers: 'TLS_CHACHA20_POLY1305_SHA256' }, true],
        ['TLS 1.2 only ECDHE-ECDSA-AES128-GCM-SHA256', { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' }, true],
        ['TLS 1.2 only ECDHE-ECDSA-AES256-GCM-SHA384', { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES256-GCM-SHA384' }, true],
        ['TLS 1.2 only ECDHE-ECDSA-CHACHA20-POLY1305', { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-CHACHA20-POLY1305' }, true],
        ['TLS 1.2 only CBC (ECDHE-ECDSA-AES128-SHA256)', { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-SHA256' }, false],
        ['TLS 1.2 only CBC (ECDHE-ECDSA-AES256-SHA384)', { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES256-SHA384' }, false],
        ['TLS 1.2 only CBC, SHA-1 MAC (ECDHE-ECDSA-AES128-SHA)', { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-SHA' }, false],
        ['TLS 1.2 only CAMELLIA', { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-CAMELLIA128-SHA256:@SECLEVEL=0' }, false],
        ['TLS 1.2 only NULL (no encryption)', { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-NULL-SHA:@SECLEVEL=0' }, false],
        ['TLS 1.1', { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0' }, false],
      ];
      let defaultsTookCbc = 0;
      for (const [name, o, accepted] of clients) {
        const was = await handshake(nodeDefaults.port, o);
        if (name.includes('CBC') && !('error' in was)) defaultsTookCbc++;
        for (const [port, where] of [[t.rx.dataPort, 'data port'], [t.rx.controlPort, 'control port'], [hubPort, 'agent hub']] as const) {
          const now = await handshake(port, o);
          assert.equal(!('error' in now), accepted, `${name} on the ${where}: ${JSON.stringify(now)}`);
        }
      }
      assert.equal(defaultsTookCbc, 3, "Node's defaults take the CBC clients, so refusing them is this setting's doing");
    } finally { nodeDefaults.close(); }
  });

  it('refuses a TLS 1.1 client and a NULL-cipher client that a permissive server would take', async () => {
    const permissive = await listen({ key, cert, minVersion: 'TLSv1', ciphers: 'ALL:eNULL:@SECLEVEL=0' });
    try {
      const clients: [string, tls.ConnectionOptions][] = [
        ['TLS 1.1', { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0' }],
        ['TLS 1.2 only NULL (no encryption)', { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-NULL-SHA:@SECLEVEL=0' }],
      ];
      for (const [name, o] of clients) {
        const ok = await handshake(permissive.port, o);
        assert.ok(!('error' in ok), `${name} must be able to connect somewhere for this check to mean anything: ${JSON.stringify(ok)}`);
        const refused = await handshake(t.rx.dataPort, o);
        assert.ok('error' in refused, `${name} connected to the receiver: ${JSON.stringify(refused)}`);
        const refusedControl = await handshake(t.rx.controlPort, o);
        assert.ok('error' in refusedControl, `${name} connected to the control port: ${JSON.stringify(refusedControl)}`);
      }
    } finally { permissive.close(); }
  });
});
