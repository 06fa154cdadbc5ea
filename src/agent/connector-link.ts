/**
 * The agent's side of the link to the connector (transfer/agent-link.ts): HTTP/1.1 requests over a TLS
 * socket whose certificate has the pinned fingerprint, through the HTTP CONNECT proxy when one is set.
 * The agent dials out; nothing dials in to the source server. The token is sent as a bearer header,
 * never logged.
 */
import { request } from 'node:http';
import { UserError } from '../util/errors.ts';
import { connectPinned, normalizeFingerprint, type ProxySpec } from '../transfer/connect.ts';
import {
  AGENT_ID_HEADER, AGENT_LINK_PORT, AGENT_POLL_SECONDS,
  type AgentCommand, type AgentCycleResult, type AgentHello, type AgentProgress, type HelloAnswer,
} from '../transfer/agent-link.ts';

export interface ConnectorLinkOptions {
  /** https://HOST[:PORT] */
  url: string;
  fingerprint: string;
  agentId: string;
  token: string;
  proxy?: ProxySpec | undefined;
  timeoutMs?: number;
}

export function parseConnectorUrl(url: string): { host: string; port: number } {
  let u: URL;
  try { u = new URL(url); } catch {
    throw new UserError('BAD_CONNECTOR', `connector "${url}" is not a URL`, 'pass --connector https://CONNECTOR:8091');
  }
  if (u.protocol !== 'https:' || !u.hostname) throw new UserError('BAD_CONNECTOR', `connector "${url}" must be an https:// URL with a host`, 'pass --connector https://CONNECTOR:8091');
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port ? Number(u.port) : AGENT_LINK_PORT };
}

export class ConnectorLink {
  private readonly host: string;
  private readonly port: number;
  private readonly fingerprint: string;

  constructor(private readonly o: ConnectorLinkOptions) {
    ({ host: this.host, port: this.port } = parseConnectorUrl(o.url));
    this.fingerprint = normalizeFingerprint(o.fingerprint);
  }

  hello(h: AgentHello): Promise<HelloAnswer> { return this.call('POST', '/v1/agent/hello', h); }

  /** Long poll: resolves with the commands the connector has, or none after about `wait` seconds. */
  async commands(wait = AGENT_POLL_SECONDS, signal?: AbortSignal): Promise<AgentCommand[]> {
    const r = await this.call<{ commands: AgentCommand[] }>('GET', `/v1/agent/commands?wait=${wait}`, undefined, (wait + 15) * 1000, signal);
    return r.commands;
  }

  progress(p: AgentProgress): Promise<unknown> { return this.call('POST', '/v1/agent/progress', p); }
  result(r: AgentCycleResult): Promise<unknown> { return this.call('POST', '/v1/agent/result', r); }

  private async call<T>(method: string, path: string, body?: unknown, timeoutMs = this.o.timeoutMs ?? 15_000, signal?: AbortSignal): Promise<T> {
    const socket = await connectPinned({
      host: this.host, port: this.port, fingerprint: this.fingerprint, proxy: this.o.proxy, timeoutMs: this.o.timeoutMs ?? 15_000,
      acceptPin: (fp) => `pass --connector-fingerprint ${fp} (or set "connector.fingerprint" in agent.json)`,
    }).catch((e: unknown) => {
      // connectPinned speaks of "the receiver"; here it is the connector.
      if ((e as { code?: string }).code === 'RECEIVER_UNREACHABLE') {
        throw new UserError('CONNECTOR_UNREACHABLE', `cannot reach the connector at ${this.host}:${this.port}: ${(e as Error).message}`,
          `check that \`vmlift connector serve --agent-port ${this.port}\` runs, and the network or proxy in between`, { cause: e, transient: true });
      }
      throw e;
    });
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise<T>((resolve, reject) => {
      const req = request({
        createConnection: () => socket, method, path,
        headers: {
          host: `${this.host}:${this.port}`, authorization: `Bearer ${this.o.token}`, [AGENT_ID_HEADER]: this.o.agentId, connection: 'close',
          ...(data ? { 'content-type': 'application/json', 'content-length': data.length } : {}),
        },
        timeout: timeoutMs,
        ...(signal ? { signal } : {}),
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.once('error', reject);
        res.once('end', () => {
          socket.destroy();
          let parsed: { error?: { code: string; message: string; fix?: string } } & Record<string, unknown> = {};
          try { parsed = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}'); } catch { /* below */ }
          if (res.statusCode === 200) { resolve(parsed as T); return; }
          const e = parsed.error;
          reject(new UserError(e?.code ?? 'CONNECTOR_ERROR', `connector: ${e?.message ?? `HTTP ${res.statusCode}`}`, e?.fix, { transient: (res.statusCode ?? 500) >= 500 }));
        });
      });
      req.once('timeout', () => req.destroy(new UserError('CONNECTOR_UNREACHABLE', `the connector did not answer ${method} ${path} within ${timeoutMs} ms`, 'check that `vmlift connector serve --agent-port` runs, and the network or proxy in between; the agent retries by itself', { transient: true })));
      req.once('error', (e) => { socket.destroy(); reject(e instanceof UserError ? e : new UserError('CONNECTOR_UNREACHABLE', `connector link: ${e.message}`, 'check that `vmlift connector serve --agent-port` runs, and the network or proxy in between; the agent retries by itself', { cause: e, transient: true })); });
      req.end(data);
    });
  }
}
