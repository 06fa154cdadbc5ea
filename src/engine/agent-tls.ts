/**
 * The connector's TLS identity for the agent link (`<home>/agent-tls/key.pem`, `cert.pem`), created on
 * first use. Agents pin its SHA-256 fingerprint (`vmlift connector add-agent` prints it).
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { chmod, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import { UserError } from '../util/errors.ts';
import { writeFileAtomic } from '../util/fsync.ts';
import type { AgentTls } from './agent-hub.ts';

export async function loadOrCreateAgentTls(dir: string): Promise<AgentTls> {
  const keyPath = join(dir, 'key.pem');
  const certPath = join(dir, 'cert.pem');
  let key = await readFile(keyPath, 'utf8').catch(() => undefined);
  let cert = await readFile(certPath, 'utf8').catch(() => undefined);
  if (!key || !cert) {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const pems = await generate([{ name: 'commonName', value: 'vmlift-connector' }], {
      keyType: 'ec', curve: 'P-256', algorithm: 'sha256', notAfterDate: new Date(Date.now() + 10 * 365 * 86400_000),
    });
    await writeFileAtomic(keyPath, pems.private);
    await chmod(keyPath, 0o600);
    await writeFileAtomic(certPath, pems.cert);
    key = pems.private;
    cert = pems.cert;
  }
  const x = new X509Certificate(cert);
  if (!x.checkPrivateKey(createPrivateKey(key))) {
    throw new UserError('TLS_KEY_MISMATCH', `${keyPath} does not belong to ${certPath}`, `remove both; the connector makes a new pair, then give every agent the new fingerprint`);
  }
  return { key, cert, fingerprint: x.fingerprint256.replace(/:/g, '').toLowerCase() };
}
