/** The per-source credential file: read it, or register with an activation code and write it. */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../util/log.ts';
import { UserError, errorMessage } from '../util/errors.ts';
import { writeFileAtomic } from '../util/fsync.ts';
import { RemoteError, type ControlClient } from './control-client.ts';

export interface Credential { sourceId: string; credential: string }

export interface CredentialOptions {
  credentialFile: string;
  sourceId: string;
  /** Needed only while the file does not exist yet. */
  activationCode?: string | undefined;
  sourceLabel?: string | undefined;
}

/** The credential in `file`, or null when there is no such file. */
export async function readCredential(file: string): Promise<Credential | null> {
  let text: string;
  try { text = await readFile(file, 'utf8'); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new UserError('CREDENTIAL_FILE', `cannot read credential file ${file}: ${errorMessage(e)}`, 'check the path and its permissions');
  }
  try {
    const c = JSON.parse(text) as Partial<Credential>;
    if (typeof c.sourceId === 'string' && typeof c.credential === 'string') return { sourceId: c.sourceId, credential: c.credential };
  } catch { /* fall through */ }
  throw new UserError('CREDENTIAL_FILE', `credential file ${file} is damaged`, 'delete it and register again with a new activation code, or under a new source id');
}

/** Registrations under way in this process, by credential file: a second connect waits for the first. */
const registering = new Map<string, Promise<unknown>>();

/**
 * The source's credential: from its file, else by registering with the activation code (the file is
 * then written). Connects that race for one file (a job's cycle and a `job show` listing its images)
 * register once: in this process they wait for each other; a registration another process won is
 * taken from the file it wrote.
 */
export async function obtainCredential(control: ControlClient, o: CredentialOptions, log: Logger): Promise<Credential> {
  const key = resolve(o.credentialFile);
  for (let p = registering.get(key); p; p = registering.get(key)) await p.catch(() => {});
  const cred = await ownCredential(o);
  if (cred) return cred;
  if (!o.activationCode) {
    throw new UserError('NO_CREDENTIAL', `no credential for source "${o.sourceId}" at ${o.credentialFile} and no activation code given`,
      'pass the activation code printed by `vmlift receiver info` (--code-file or VMLIFT_CODE) to register this source');
  }
  const p = register(control, o, o.activationCode, log);
  registering.set(key, p);
  try {
    return await p;
  } finally {
    if (registering.get(key) === p) registering.delete(key);
  }
}

async function ownCredential(o: CredentialOptions): Promise<Credential | null> {
  const cred = await readCredential(o.credentialFile);
  if (cred && cred.sourceId !== o.sourceId) {
    throw new UserError('CREDENTIAL_MISMATCH', `credential file ${o.credentialFile} belongs to source "${cred.sourceId}", not "${o.sourceId}"`,
      'use the credential file of this source, or a new file path to register this source');
  }
  return cred;
}

/** The credential another process registered: it writes the file right after the receiver answers it. */
async function writtenByWinner(o: CredentialOptions, waitMs = 2000): Promise<Credential | null> {
  for (const until = Date.now() + waitMs; ; await sleep(50)) {
    const cred = await ownCredential(o);
    if (cred || Date.now() >= until) return cred;
  }
}

async function register(control: ControlClient, o: CredentialOptions, code: string, log: Logger): Promise<Credential> {
  let r;
  try {
    r = await control.register({ sourceId: o.sourceId, code, label: o.sourceLabel ?? null });
  } catch (e) {
    const won = e instanceof RemoteError && e.code === 'ALREADY_REGISTERED' ? await writtenByWinner(o) : null;
    if (won) return won;
    throw e;
  }
  const registered: Credential = { sourceId: r.sourceId, credential: r.credential };
  await writeFileAtomic(o.credentialFile, `${JSON.stringify(registered)}\n`);
  log.info({ credentialFile: o.credentialFile }, 'registered with the receiver');
  return registered;
}
