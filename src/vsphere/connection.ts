/** Where the vCenter connection comes from: flags, then VMLIFT_* env vars, then a config file; the password never from argv. */
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { UserError } from '../util/errors.ts';
import { readSecret } from '../util/secret.ts';
import { normalizeThumbprint, type TrustMode } from './tls.ts';
import { sdkUrl, type ConnectOptions } from './session.ts';

export interface ConnectionFlags {
  server?: string; user?: string; passwordFile?: string; thumbprint?: string; insecure?: boolean; config?: string;
}

interface ConfigFile { server?: string; user?: string; passwordFile?: string; thumbprint?: string; insecure?: boolean }

export const DEFAULT_CONFIG = join(homedir(), '.config', 'vmlift', 'vcenter.json');

async function readConfig(path: string | undefined): Promise<ConfigFile> {
  const p = path ?? process.env.VMLIFT_VC_CONFIG ?? (existsSync(DEFAULT_CONFIG) ? DEFAULT_CONFIG : undefined);
  if (!p) return {};
  try {
    return JSON.parse(await readFile(p, 'utf8')) as ConfigFile;
  } catch (e) {
    throw new UserError('VC_CONFIG', `cannot read the vCenter config file ${p}: ${(e as Error).message}`,
      'fix the file: JSON with server, user, passwordFile and thumbprint', { cause: e });
  }
}

async function promptHidden(question: string): Promise<string> {
  const { stdin, stderr } = process;
  stderr.write(question);
  stdin.setRawMode?.(true);
  stdin.resume();
  return new Promise((resolve, reject) => {
    let s = '';
    const onData = (b: Buffer) => {
      for (const ch of b.toString('utf8')) {
        if (ch === '\r' || ch === '\n') { done(); return resolve(s); }
        if (ch === '\u0003') { done(); return reject(new UserError('VC_PASSWORD', 'password prompt interrupted', 'run the command again')); }
        if (ch === '\u007f') s = s.slice(0, -1); else s += ch;
      }
    };
    const done = () => { stdin.off('data', onData); stdin.setRawMode?.(false); stdin.pause(); stderr.write('\n'); };
    stdin.on('data', onData);
  });
}

export async function resolveConnection(flags: ConnectionFlags, o: { warn?: (msg: string) => void; timeoutMs?: number } = {}): Promise<ConnectOptions> {
  const cfg = await readConfig(flags.config);
  const env = process.env;
  const server = flags.server ?? env.VMLIFT_SERVER ?? cfg.server;
  if (!server) throw new UserError('VC_SERVER', 'no vCenter given', 'pass --server https://VCENTER/sdk, set VMLIFT_SERVER, or write a config file (--config)');
  const user = flags.user ?? env.VMLIFT_USER ?? cfg.user;
  if (!user) throw new UserError('VC_USER', 'no vCenter user given', 'pass --user, set VMLIFT_USER, or put "user" in the config file');
  const passwordFile = flags.passwordFile ?? env.VMLIFT_PASSWORD_FILE ?? cfg.passwordFile;
  let password = await readSecret({ file: passwordFile, env: 'VMLIFT_PASSWORD', what: 'vCenter password' });
  if (password === undefined) {
    if (!process.stdin.isTTY) {
      throw new UserError('VC_PASSWORD', 'no vCenter password given', 'pass --password-file FILE, or set VMLIFT_PASSWORD_FILE or VMLIFT_PASSWORD (never on the command line)');
    }
    password = await promptHidden(`vCenter password for ${user}: `);
  }
  const thumbprint = flags.thumbprint ?? env.VMLIFT_THUMBPRINT ?? cfg.thumbprint;
  const insecure = flags.insecure ?? (env.VMLIFT_INSECURE === '1' || cfg.insecure === true);
  let trust: TrustMode;
  if (thumbprint) {
    if (flags.insecure) throw new UserError('VC_TRUST', '--thumbprint and --insecure exclude each other', 'keep --thumbprint (safe) and drop --insecure');
    trust = { thumbprint: normalizeThumbprint(thumbprint) };
  } else if (insecure) {
    (o.warn ?? ((m) => process.stderr.write(`vmlift: warning: ${m}\n`)))(
      `--insecure: the certificate of ${server} is NOT verified; anyone on the network path can read the vCenter password. Pin it with --thumbprint instead`);
    trust = { insecure: true };
  } else {
    trust = { systemCa: true };
  }
  return { server: sdkUrl(server), user, password, trust, timeoutMs: o.timeoutMs };
}
