import { readFile, copyFile, chmod, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { UserError } from '../util/errors.ts';
import { writeFileAtomic } from '../util/fsync.ts';
import { checkNbdCommand } from '../source/nbd-server.ts';

/** config.json in the connector's home. Secrets live in files beside it (mode 0600), never in the config. */
export interface ConnectorConfig {
  vcenter: {
    server: string;
    user: string;
    /** File with the vCenter password (inside the home, 0600). */
    passwordFile: string;
    thumbprint?: string;
    insecure?: boolean;
  };
  receiver: {
    /** host[:controlPort] */
    address: string;
    fingerprint: string;
    /** File with the activation code used to register each new source (inside the home, 0600). */
    codeFile: string;
    dataPort?: number;
    proxy?: string;
    proxyPasswordFile?: string;
    /** Unacknowledged payload a cycle keeps for resend, MiB (default 64; the kill -9 matrix uses a small one). */
    windowMib?: number;
  };
  limits: { disksPerHost: number; disksOverall: number; maxConcurrentJobs: number };
  /** Read size cap for disk transports (VMware NFC through vCenter: 2 MiB). */
  maxReadSize: number;
  /** VDDK's folder (the one holding lib64/libvixDiskLib.so); `auto` reads through VDDK when it loads. */
  vddkLibdir?: string;
  /** VDDK configuration file for InitEx (NFC AIO buffers and the like). */
  vddkConfigFile?: string;
  /** VDDK transport modes in order, e.g. "nbdssl:nbd" (default), "hotadd:nbdssl:nbd". */
  vddkTransports?: string;
  /** The NBD server the connector starts per disk and cycle; `command` is a template (docs/transports.md). */
  nbd?: { command?: string[] };
  /** Retries of a cycle's transient errors (default 4 attempts, 5 s doubling to at most 120 s; tests use short ones). */
  retry?: { attempts: number; baseDelayMs: number; maxDelayMs: number };
}

/**
 * Each disk being read holds its reads in flight plus its sender's window until flushed, so the number
 * of disks read at once, not the number of jobs, bounds the connector's memory (docs/engine.md, Measurements).
 */
export const DEFAULT_LIMITS = { disksPerHost: 8, disksOverall: 8, maxConcurrentJobs: 100 };

export async function readConnectorConfig(home: string): Promise<ConnectorConfig> {
  const path = join(home, 'config.json');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new UserError('NO_CONNECTOR_CONFIG', `the connector home ${home} has no config.json`,
      `run \`vmlift connector init --home ${home} --server URL --user U --password-file F --receiver HOST --fingerprint FP --code-file F\``, { cause: e });
  }
  try {
    const c = JSON.parse(text) as ConnectorConfig;
    if (c.nbd?.command !== undefined) checkNbdCommand(c.nbd.command, `"nbd.command" in ${path}`);
    return { ...c, limits: { ...DEFAULT_LIMITS, ...c.limits }, maxReadSize: c.maxReadSize ?? 2 << 20 };
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw new UserError('BAD_CONNECTOR_CONFIG', `${path} is not valid JSON: ${(e as Error).message}`, 'fix or re-create it with `vmlift connector init`');
  }
}

/** Copy a secret file into the home with mode 0600 and return its new path. */
export async function keepSecret(home: string, name: string, from: string): Promise<string> {
  const dir = join(home, 'secrets');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const to = join(dir, name);
  try {
    await copyFile(from, to);
  } catch (e) {
    throw new UserError('SECRET_FILE', `cannot read ${from}: ${(e as Error).message}`, 'check the path and its permissions', { cause: e });
  }
  await chmod(to, 0o600);
  return to;
}

export async function writeConnectorConfig(home: string, c: ConnectorConfig): Promise<void> {
  await mkdir(home, { recursive: true, mode: 0o700 });
  await writeFileAtomic(join(home, 'config.json'), `${JSON.stringify(c, null, 2)}\n`);
}
