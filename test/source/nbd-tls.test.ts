import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { NbdSource } from '../../src/source/nbd/index.ts';
import { UserError } from '../../src/util/errors.ts';
import { freePort, portReady, readAll, startServer, tempDir, type Server } from './helpers.ts';

const { dir, cleanup } = tempDir('vmlift-nbdtls-');
const servers: Server[] = [];
after(async () => { await Promise.all(servers.map((s) => s.stop())); cleanup(); });

const openssl = (...args: string[]): void => { execFileSync('openssl', args, { stdio: 'ignore' }); };

/** A CA, a server certificate for localhost/127.0.0.1 and a client certificate, the layout nbdkit and libnbd read. */
function makePki(root: string, name: string): { server: string; client: string } {
  const server = path.join(root, `${name}-server`);
  const client = path.join(root, `${name}-client`);
  mkdirSync(server, { recursive: true });
  mkdirSync(client, { recursive: true });
  const f = (n: string): string => path.join(root, `${name}-${n}`);
  openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2', '-subj', `/CN=${name} test CA`,
    '-keyout', f('ca-key.pem'), '-out', f('ca-cert.pem'), '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  const leaf = (who: string, ext: string): void => {
    openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${who}`, '-keyout', f(`${who}-key.pem`), '-out', f(`${who}.csr`));
    writeFileSync(f(`${who}.ext`), ext);
    openssl('x509', '-req', '-in', f(`${who}.csr`), '-CA', f('ca-cert.pem'), '-CAkey', f('ca-key.pem'), '-CAcreateserial', '-days', '2',
      '-extfile', f(`${who}.ext`), '-out', f(`${who}-cert.pem`));
  };
  leaf('localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n');
  leaf('vmlift', 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n');
  copyFileSync(f('ca-cert.pem'), path.join(server, 'ca-cert.pem'));
  copyFileSync(f('localhost-cert.pem'), path.join(server, 'server-cert.pem'));
  copyFileSync(f('localhost-key.pem'), path.join(server, 'server-key.pem'));
  copyFileSync(f('ca-cert.pem'), path.join(client, 'ca-cert.pem'));
  copyFileSync(f('vmlift-cert.pem'), path.join(client, 'client-cert.pem'));
  copyFileSync(f('vmlift-key.pem'), path.join(client, 'client-key.pem'));
  return { server, client };
}

describe('NBD over TLS (NBD_OPT_STARTTLS) against nbdkit --tls=require', () => {
  let pki: { server: string; client: string };
  let other: { server: string; client: string };
  let port: number;
  let peerPort: number;
  const size = 3 << 20;
  const want = Buffer.alloc(size);
  for (let o = 0; o < size; o += 8) want.writeBigUInt64BE(BigInt(o), o);

  before(async () => {
    pki = makePki(dir, 'a');
    other = makePki(dir, 'b');
    port = await freePort();
    servers.push(await startServer('nbdkit', ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), '--tls=require',
      `--tls-certificates=${pki.server}`, 'pattern', String(size)], portReady(port)));
    peerPort = await freePort();
    servers.push(await startServer('nbdkit', ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(peerPort), '--tls=require',
      `--tls-certificates=${pki.server}`, '--tls-verify-peer', 'pattern', String(size)], portReady(peerPort)));
  });

  it('reads every byte with the CA pinned through tls-certificates=DIR', async () => {
    const src = await NbdSource.open(`nbds://localhost:${port}/?tls-certificates=${pki.client}`);
    try { assert.ok((await readAll(src, { chunk: 256 << 10 })).equals(want)); } finally { await src.close(); }
  });

  it('accepts a pinned certificate fingerprint, and refuses a different one', async () => {
    const fp = new X509Certificate(readFileSync(path.join(pki.server, 'server-cert.pem'))).fingerprint256;
    const src = await NbdSource.open(`nbds://127.0.0.1:${port}/`, { tls: { fingerprint256: fp } });
    assert.ok((await src.read(4096, 4096)).equals(want.subarray(4096, 8192)));
    await src.close();
    const wrong = new X509Certificate(readFileSync(path.join(other.server, 'server-cert.pem'))).fingerprint256;
    await assert.rejects(NbdSource.open(`nbds://127.0.0.1:${port}/`, { tls: { fingerprint256: wrong }, retry: { attempts: 1 } }),
      (e: unknown) => e instanceof UserError && /fingerprint .* does not match the pinned/.test(e.message) && /fingerprint/.test(e.fix ?? ''));
  });

  it('refuses a server certificate from another CA', async () => {
    await assert.rejects(NbdSource.open(`nbds://localhost:${port}/?tls-certificates=${other.client}`, { retry: { attempts: 1 } }),
      (e: unknown) => e instanceof UserError && /TLS to .* failed: .*(certificate|verify)/i.test(e.message));
  });

  it('tells the user to use nbds:// when the server requires TLS', async () => {
    await assert.rejects(NbdSource.open(`nbd://localhost:${port}/`, { retry: { attempts: 1 } }),
      (e: unknown) => e instanceof UserError && /requires TLS/.test(e.message) && /nbds:\/\//.test(e.fix ?? ''));
  });

  it('presents a client certificate to a server that verifies peers', async () => {
    const src = await NbdSource.open(`nbds://localhost:${peerPort}/?tls-certificates=${pki.client}`);
    assert.ok((await src.read(0, 65536)).equals(want.subarray(0, 65536)));
    await src.close();
    await assert.rejects(NbdSource.open(`nbds://localhost:${peerPort}/`, { tls: { ca: readFileSync(path.join(pki.client, 'ca-cert.pem')) }, retry: { attempts: 1 } }),
      (e: unknown) => e instanceof UserError);
  });
});
