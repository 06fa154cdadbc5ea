/**
 * The receiver's identity and admission state, all under DATA_DIR:
 *   tls/key.pem, tls/cert.pem      self-signed certificate made on first start (key 0600); `rotateTls` replaces them
 *   tls/retired/<time>-cert.pem    certificates replaced by a rotation
 *   codes/<hash16>.json            activation codes (plain code kept so `receiver info` can show it; 0600)
 *   sources/<sourceId>.json        registered sources: only the SHA-256 of their credential
 */
import { createHash, createPrivateKey, randomBytes, timingSafeEqual, X509Certificate } from 'node:crypto';
import { mkdir, readFile, readdir, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import { writeFileAtomic } from '../util/fsync.ts';
import { UserError } from '../util/errors.ts';
import { assertId } from '../util/ids.ts';

export interface TlsIdentity { key: string; cert: string; fingerprint: string }
export interface ActivationCode { code: string; quota: number; used: number; createdAt: string; expiresAt: string }
export interface SourceRecord { sourceId: string; credentialSha256: string; label: string | null; registeredAt: string; codeId: string }

export const CODE_LIMITS = { quota: { min: 1, max: 1000, default: 200 }, days: { min: 1, max: 90, default: 90 } };

const sha256hex = (s: string) => createHash('sha256').update(s).digest('hex');
const codeId = (code: string) => sha256hex(code.trim().toUpperCase()).slice(0, 16);

async function exists(p: string): Promise<boolean> {
  try { await readFile(p); return true; } catch { return false; }
}

export function certFingerprint(certPem: string): string {
  return new X509Certificate(certPem).fingerprint256.replace(/:/g, '').toLowerCase();
}

async function writeNewTls(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const notAfter = new Date(Date.now() + 10 * 365 * 86400_000);
  const pems = await generate([{ name: 'commonName', value: 'vmlift-receiver' }], {
    keyType: 'ec', curve: 'P-256', algorithm: 'sha256', notAfterDate: notAfter,
  });
  // key first: a crash in between leaves a key that does not match the certificate, so the receiver
  // refuses to start (TLS_KEY_MISMATCH) until rotate-cert runs again; it never serves a half identity
  await writeFileAtomic(join(dir, 'key.pem'), pems.private);
  await chmod(join(dir, 'key.pem'), 0o600);
  await writeFileAtomic(join(dir, 'cert.pem'), pems.cert);
}

/** Load the TLS identity, creating it on first start. */
export async function loadOrCreateTls(dataDir: string): Promise<{ tls: TlsIdentity; created: boolean }> {
  const dir = join(dataDir, 'tls');
  let created = false;
  if (!(await exists(join(dir, 'cert.pem'))) || !(await exists(join(dir, 'key.pem')))) {
    await writeNewTls(dir);
    created = true;
  }
  const key = await readFile(join(dir, 'key.pem'), 'utf8');
  const cert = await readFile(join(dir, 'cert.pem'), 'utf8');
  if (!new X509Certificate(cert).checkPrivateKey(createPrivateKey(key))) {
    throw new UserError('TLS_KEY_MISMATCH', `${join(dir, 'key.pem')} does not belong to ${join(dir, 'cert.pem')} (a certificate rotation was cut short)`,
      `run \`vmlift receiver rotate-cert --data-dir ${dataDir}\` again, then give every sender the new fingerprint`);
  }
  return { tls: { key, cert, fingerprint: certFingerprint(cert) }, created };
}

/**
 * `receiver rotate-cert`: a new key and certificate replace the old ones (the old certificate is kept
 * as tls/retired/<time>-cert.pem for the record, the old key is deleted). A running receiver keeps
 * serving the old certificate until it is restarted.
 */
export async function rotateTls(dataDir: string): Promise<{ oldFingerprint: string; fingerprint: string; retiredCert: string }> {
  const dir = join(dataDir, 'tls');
  let oldCert: string;
  try { oldCert = await readFile(join(dir, 'cert.pem'), 'utf8'); } catch {
    throw new UserError('NO_RECEIVER', `${dataDir} holds no receiver (no tls/cert.pem)`,
      'check --data-dir, or start the receiver once with `vmlift receiver serve --data-dir DIR`');
  }
  const retiredDir = join(dir, 'retired');
  await mkdir(retiredDir, { recursive: true, mode: 0o700 });
  const retiredCert = join(retiredDir, `${new Date().toISOString().replace(/[:.]/g, '-')}-cert.pem`);
  await writeFileAtomic(retiredCert, oldCert);
  await writeNewTls(dir);
  const cert = await readFile(join(dir, 'cert.pem'), 'utf8');
  return { oldFingerprint: certFingerprint(oldCert), fingerprint: certFingerprint(cert), retiredCert };
}

export function checkCodeLimits(quota: number, days: number): void {
  const q = CODE_LIMITS.quota; const d = CODE_LIMITS.days;
  if (!(Number.isInteger(quota) && quota >= q.min && quota <= q.max)) {
    throw new UserError('BAD_QUOTA', `quota ${quota} is outside ${q.min}..${q.max} sources`, `choose --quota between ${q.min} and ${q.max}`);
  }
  if (!(Number.isInteger(days) && days >= d.min && days <= d.max)) {
    throw new UserError('BAD_DAYS', `validity ${days} days is outside ${d.min}..${d.max}`, `choose --days between ${d.min} and ${d.max}`);
  }
}

export async function createCode(dataDir: string, quota: number = CODE_LIMITS.quota.default, days: number = CODE_LIMITS.days.default): Promise<ActivationCode> {
  checkCodeLimits(quota, days);
  const raw = randomBytes(15).toString('base64url').toUpperCase().replace(/[^A-Z0-9]/g, 'X');
  const code = `VML-${raw.slice(0, 5)}-${raw.slice(5, 10)}-${raw.slice(10, 15)}-${raw.slice(15, 20)}`.replace(/-$/, '');
  const now = Date.now();
  const c: ActivationCode = { code, quota, used: 0, createdAt: new Date(now).toISOString(), expiresAt: new Date(now + days * 86400_000).toISOString() };
  await mkdir(join(dataDir, 'codes'), { recursive: true, mode: 0o700 });
  await writeFileAtomic(join(dataDir, 'codes', `${codeId(code)}.json`), JSON.stringify(c));
  return c;
}

export async function listCodes(dataDir: string): Promise<ActivationCode[]> {
  let names: string[];
  try { names = await readdir(join(dataDir, 'codes')); } catch { return []; }
  const out: ActivationCode[] = [];
  for (const n of names.filter((x) => /^[0-9a-f]{16}\.json$/.test(x))) {
    out.push(JSON.parse(await readFile(join(dataDir, 'codes', n), 'utf8')) as ActivationCode);
  }
  return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

export async function sourceRecord(dataDir: string, sourceId: string): Promise<SourceRecord | null> {
  try {
    return JSON.parse(await readFile(join(dataDir, 'sources', `${assertId(sourceId, 'source id')}.json`), 'utf8')) as SourceRecord;
  } catch (e) {
    if (e instanceof UserError) throw e;
    return null;
  }
}

let admission: Promise<unknown> = Promise.resolve();
/** Registrations are serialized so a code's quota is never over-spent. */
function serialized<T>(fn: () => Promise<T>): Promise<T> {
  const p = admission.then(fn, fn);
  admission = p.catch(() => undefined);
  return p;
}

/** Register a new source with an activation code; returns its credential (shown once, stored hashed). */
export function registerSource(dataDir: string, sourceId: string, code: string, label: string | null): Promise<{ credential: string }> {
  return serialized(async () => {
    assertId(sourceId, 'source id');
    if (typeof code !== 'string' || !code) throw new UserError('CODE_UNKNOWN', 'no activation code given', 'pass the code printed by `vmlift receiver info`');
    const id = codeId(code);
    const path = join(dataDir, 'codes', `${id}.json`);
    let c: ActivationCode;
    try { c = JSON.parse(await readFile(path, 'utf8')) as ActivationCode; } catch {
      throw new UserError('CODE_UNKNOWN', 'the activation code is not known to this receiver', 'check the code with `vmlift receiver info` on the receiver');
    }
    if (c.code.toUpperCase() !== code.trim().toUpperCase()) throw new UserError('CODE_UNKNOWN', 'the activation code is not known to this receiver', 'check the code with `vmlift receiver info` on the receiver');
    if (Date.parse(c.expiresAt) <= Date.now()) {
      throw new UserError('CODE_EXPIRED', `the activation code expired at ${c.expiresAt}`, 'make a new one with `vmlift receiver code --data-dir DIR`');
    }
    if (c.used >= c.quota) {
      throw new UserError('CODE_USED_UP', `the activation code has registered its quota of ${c.quota} sources`, 'make a new one with `vmlift receiver code --data-dir DIR --quota N`');
    }
    if (await sourceRecord(dataDir, sourceId)) {
      throw new UserError('ALREADY_REGISTERED', `source "${sourceId}" is already registered`,
        'use the credential file saved when it registered, or register under a new source id');
    }
    const credential = randomBytes(32).toString('base64url');
    const rec: SourceRecord = { sourceId, credentialSha256: sha256hex(credential), label, registeredAt: new Date().toISOString(), codeId: id };
    c.used++;
    await writeFileAtomic(path, JSON.stringify(c));
    await mkdir(join(dataDir, 'sources'), { recursive: true, mode: 0o700 });
    await writeFileAtomic(join(dataDir, 'sources', `${sourceId}.json`), JSON.stringify(rec));
    return { credential };
  });
}

const authCache = new Map<string, { hash: Buffer; at: number }>();

/** True when `credential` is the one issued to `sourceId`. */
export async function authenticate(dataDir: string, sourceId: unknown, credential: unknown): Promise<boolean> {
  if (typeof sourceId !== 'string' || typeof credential !== 'string' || !credential) return false;
  assertId(sourceId, 'source id');
  const key = `${dataDir}\0${sourceId}`;
  let cached = authCache.get(key);
  if (!cached || Date.now() - cached.at > 5000) {
    const rec = await sourceRecord(dataDir, sourceId);
    if (!rec) return false;
    cached = { hash: Buffer.from(rec.credentialSha256, 'hex'), at: Date.now() };
    authCache.set(key, cached);
  }
  const got = createHash('sha256').update(credential).digest();
  return got.length === cached.hash.length && timingSafeEqual(got, cached.hash);
}
