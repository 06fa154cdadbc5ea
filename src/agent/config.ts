/**
 * The agent's config file, `/etc/vmlift/agent.json` (or `--config FILE`, env `VMLIFT_AGENT_CONFIG`).
 * Command-line flags override each field. An invalid file is an `AGENT_CONFIG` error naming the file,
 * the field and the fix; unknown fields are refused too (a typo would otherwise be ignored silently).
 * The file holds no secret: the token, the activation code and the proxy password are files it names.
 */
import { readFile } from 'node:fs/promises';
import { UserError } from '../util/errors.ts';
import { isValidId } from '../util/ids.ts';

export const DEFAULT_AGENT_CONFIG = '/etc/vmlift/agent.json';

export interface AgentConfig {
  /** The receiver's control address, host[:port]. */
  receiver?: string;
  /** The receiver certificate's SHA-256 fingerprint. */
  fingerprint?: string;
  dataPort?: number;
  /** File with the receiver's activation code (needed until the source is registered). */
  codeFile?: string;
  connector?: { url: string; fingerprint?: string; tokenFile?: string };
  proxy?: { ip: string; port: number; user?: string; passwordFile?: string };
  devices?: string[];
  agentId?: string;
  sourceId?: string;
  stateDir?: string;
  ignoreCheck?: boolean;
}

const TOP = ['receiver', 'fingerprint', 'dataPort', 'codeFile', 'connector', 'proxy', 'devices', 'agentId', 'sourceId', 'stateDir', 'ignoreCheck'];
const EXAMPLE = '{"connector": {"url": "https://connector:8091", "fingerprint": "AB:CD:…", "tokenFile": "/etc/vmlift/agent.token"}, "devices": ["/dev/sda"]}';

/** Reads the file; a missing default file is an empty config, a missing named file is an error. */
export async function loadAgentConfig(path: string | undefined): Promise<{ path: string; config: AgentConfig; found: boolean }> {
  const file = path ?? process.env.VMLIFT_AGENT_CONFIG ?? DEFAULT_AGENT_CONFIG;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' && path === undefined && process.env.VMLIFT_AGENT_CONFIG === undefined) return { path: file, config: {}, found: false };
    throw new UserError('AGENT_CONFIG', `cannot read the agent config ${file}: ${(e as Error).message}`, 'check the path given with --config (or VMLIFT_AGENT_CONFIG) and its permissions', { cause: e });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new UserError('AGENT_CONFIG', `${file} is not valid JSON: ${(e as Error).message}`, `fix the JSON syntax; a valid file looks like ${EXAMPLE}`);
  }
  return { path: file, config: parseAgentConfig(raw, file), found: true };
}

/** Validates the parsed JSON; every error names `file`, the field and what to write instead. */
export function parseAgentConfig(raw: unknown, file = 'agent.json'): AgentConfig {
  const bad = (field: string, why: string, fix: string): never => {
    throw new UserError('AGENT_CONFIG', `${file}: "${field}" ${why}`, fix);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad('(top level)', 'must be a JSON object', `write an object, e.g. ${EXAMPLE}`);
  const o = raw as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!TOP.includes(k)) bad(k, 'is not a known field', `remove it or correct its name; the fields are ${TOP.join(', ')}`);
  const str = (v: unknown, field: string, example: string): string => {
    if (typeof v !== 'string' || v.trim() === '') bad(field, `must be a non-empty string, got ${JSON.stringify(v)}`, `set "${field}" to a string, e.g. "${example}"`);
    return (v as string).trim();
  };
  const port = (v: unknown, field: string, example: number): number => {
    if (!Number.isInteger(v) || (v as number) < 1 || (v as number) > 65535) bad(field, `must be a port number 1..65535, got ${JSON.stringify(v)}`, `set "${field}" to a number, e.g. ${example}`);
    return v as number;
  };
  const fingerprint = (v: unknown, field: string): string => {
    const s = str(v, field, 'AB:CD:…');
    if (!/^[0-9a-f]{64}$/i.test(s.replace(/^sha256[:=]/i, '').replace(/:/g, ''))) {
      bad(field, `is not a SHA-256 fingerprint (64 hex digits, colons optional): ${JSON.stringify(s)}`, `copy the fingerprint printed by ${field.startsWith('connector') ? '`vmlift connector add-agent`' : '`vmlift receiver info`'}`);
    }
    return s;
  };
  const obj = (v: unknown, field: string, keys: string[]): Record<string, unknown> => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(field, 'must be an object', `set "${field}" to an object with ${keys.join(', ')}`);
    for (const k of Object.keys(v as object)) if (!keys.includes(k)) bad(`${field}.${k}`, 'is not a known field', `remove it or correct its name; "${field}" holds ${keys.join(', ')}`);
    return v as Record<string, unknown>;
  };
  const c: AgentConfig = {};
  if (o.receiver !== undefined) {
    c.receiver = str(o.receiver, 'receiver', 'receiver.example:8080');
    if (!/^(\[[0-9a-f:.]+\]|[^:/\s]+)(:\d{1,5})?$/i.test(c.receiver)) bad('receiver', `is not host[:port]: ${JSON.stringify(c.receiver)}`, 'set "receiver" to the receiver\'s host or host:port, e.g. "10.0.0.5:8080" (no scheme)');
  }
  if (o.fingerprint !== undefined) c.fingerprint = fingerprint(o.fingerprint, 'fingerprint');
  if (o.dataPort !== undefined) c.dataPort = port(o.dataPort, 'dataPort', 8703);
  if (o.codeFile !== undefined) c.codeFile = str(o.codeFile, 'codeFile', '/etc/vmlift/activation-code');
  if (o.connector !== undefined) {
    const x = obj(o.connector, 'connector', ['url', 'fingerprint', 'tokenFile']);
    const url = str(x.url, 'connector.url', 'https://connector.example:8091');
    let u: URL | undefined;
    try { u = new URL(url); } catch { /* below */ }
    if (!u || u.protocol !== 'https:' || !u.hostname) bad('connector.url', `must be an https:// URL with a host, got ${JSON.stringify(url)}`, 'set "connector.url" to "https://CONNECTOR:8091" (the port of `connector serve --agent-port`)');
    c.connector = { url };
    if (x.fingerprint !== undefined) c.connector.fingerprint = fingerprint(x.fingerprint, 'connector.fingerprint');
    if (x.tokenFile !== undefined) c.connector.tokenFile = str(x.tokenFile, 'connector.tokenFile', '/etc/vmlift/agent.token');
  }
  if (o.proxy !== undefined) {
    const x = obj(o.proxy, 'proxy', ['ip', 'port', 'user', 'passwordFile']);
    c.proxy = { ip: str(x.ip, 'proxy.ip', '10.0.0.1'), port: port(x.port, 'proxy.port', 3128) };
    if (x.user !== undefined) c.proxy.user = str(x.user, 'proxy.user', 'migrate');
    if (x.passwordFile !== undefined) c.proxy.passwordFile = str(x.passwordFile, 'proxy.passwordFile', '/etc/vmlift/proxy-password');
  }
  if (o.devices !== undefined) {
    if (!Array.isArray(o.devices) || o.devices.length === 0) bad('devices', 'must be a non-empty array of device paths', 'set "devices" to e.g. ["/dev/sda", "/dev/sdb"]');
    c.devices = (o.devices as unknown[]).map((d, i) => {
      const s = str(d, `devices[${i}]`, '/dev/sda');
      if (!s.startsWith('/')) bad(`devices[${i}]`, `must be an absolute path, got ${JSON.stringify(s)}`, 'write the full path, e.g. "/dev/sda"');
      return s;
    });
  }
  for (const k of ['agentId', 'sourceId'] as const) {
    if (o[k] !== undefined) {
      const s = str(o[k], k, 'web02');
      if (!isValidId(s)) bad(k, `must be lowercase a-z, 0-9 and '-' (1-64 characters), got ${JSON.stringify(s)}`, `set "${k}" to e.g. "web02"`);
      c[k] = s;
    }
  }
  if (o.stateDir !== undefined) c.stateDir = str(o.stateDir, 'stateDir', '/var/lib/vmlift-agent');
  if (o.ignoreCheck !== undefined) {
    if (typeof o.ignoreCheck !== 'boolean') bad('ignoreCheck', `must be true or false, got ${JSON.stringify(o.ignoreCheck)}`, 'set "ignoreCheck" to true or false (without quotes)');
    c.ignoreCheck = o.ignoreCheck as boolean;
  }
  return c;
}

/** The proxy of the config as the URL the transfer layer takes (`http://user@ip:port`). */
export function proxyUrl(p: NonNullable<AgentConfig['proxy']>): string {
  const host = p.ip.includes(':') ? `[${p.ip}]` : p.ip;
  return `http://${p.user ? `${encodeURIComponent(p.user)}@` : ''}${host}:${p.port}`;
}
