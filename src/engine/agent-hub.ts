/**
 * The connector's end of the agent link (transfer/agent-link.ts): an HTTPS listener the agents dial
 * out to (TLS with the connector's own certificate, which agents pin), every request authenticated by
 * the agent's token (agent-registry.ts), and the live state of each agent: its reported devices, the
 * commands waiting for its next long poll, and the cycles it runs for the engine with their progress.
 */
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { UserError, errorMessage, errorReport, isTransient, isUserError } from '../util/errors.ts';
import {
  AGENT_ID_HEADER, AGENT_POLL_SECONDS,
  type AgentCommand, type AgentCycleCommand, type AgentCycleResult, type AgentHello, type AgentProgress,
} from '../transfer/agent-link.ts';
import type { AgentRegistry } from './agent-registry.ts';
import { readJsonBody } from '../util/read-json-body.ts';
import { SERVER_TLS } from '../transfer/tls-suites.ts';

export interface AgentTls { key: string; cert: string; fingerprint: string }

interface LiveAgent {
  id: string;
  hello?: AgentHello;
  connectedAt?: string;
  lastSeen: number;
  polls: number;
  queue: AgentCommand[];
  wake?: () => void;
}

interface Expected {
  agentId: string;
  lastHeard: number;
  onProgress(p: AgentProgress): void;
  resolve(r: AgentCycleResult): void;
  reject(e: unknown): void;
}

export interface AgentSummary {
  id: string;
  online: boolean;
  lastSeen: string | null;
  hostname: string | null;
  devices: AgentHello['devices'];
  jobs: string[];
}

export class AgentHub {
  private server: Server | undefined;
  private readonly agents = new Map<string, LiveAgent>();
  private readonly expected = new Map<string, Expected>();
  /** Results nobody waited for (a connector restarted while the agent ran the cycle), by cycle id. */
  private readonly unclaimed = new Map<string, { r: AgentCycleResult; at: number }>();
  private readonly onlineWaiters = new Set<() => void>();

  constructor(private readonly o: {
    registry: AgentRegistry; logger: Logger; tls: AgentTls;
    /** An agent silent this long (no poll, no progress) is lost: its cycle fails, transiently. Default 90 s. */
    lostAfterMs?: number;
  }) {}

  get fingerprint(): string { return this.o.tls.fingerprint; }

  async listen(port: number, host: string): Promise<AddressInfo> {
    this.server = createServer({ key: this.o.tls.key, cert: this.o.tls.cert, ...SERVER_TLS }, (req, res) => { void this.handle(req, res); });
    await new Promise<void>((resolve, reject) => { this.server!.once('error', reject); this.server!.listen(port, host, resolve); });
    return this.server.address() as AddressInfo;
  }

  async close(): Promise<void> {
    for (const a of this.agents.values()) a.wake?.();
    for (const e of this.expected.values()) e.reject(new UserError('SHUTDOWN', 'connector is shutting down', undefined, { transient: true }));
    this.expected.clear();
    if (this.server) {
      this.server.closeAllConnections();
      await new Promise<void>((resolve) => this.server!.close(() => resolve()));
    }
  }

  /** Connected: a poll is open now, or one ended within the last 45 s. */
  online(agentId: string): boolean {
    const a = this.agents.get(agentId);
    return !!a?.hello && (a.polls > 0 || Date.now() - a.lastSeen < 45_000);
  }

  hello(agentId: string): AgentHello | undefined { return this.agents.get(agentId)?.hello; }

  /** Waits up to `ms` for the agent to connect. */
  async waitOnline(agentId: string, ms: number, signal?: AbortSignal): Promise<boolean> {
    const end = Date.now() + ms;
    while (!this.online(agentId)) {
      if (Date.now() >= end || signal?.aborted) return false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.min(1000, end - Date.now()));
        function done(): void { clearTimeout(t); resolve(); }
        this.onlineWaiters.add(done);
      });
    }
    return true;
  }

  list(): AgentSummary[] {
    return this.o.registry.list().map((r) => {
      const a = this.agents.get(r.id);
      return {
        id: r.id, online: this.online(r.id), lastSeen: a?.lastSeen ? new Date(a.lastSeen).toISOString() : null,
        hostname: a?.hello?.hostname ?? null, devices: a?.hello?.devices ?? [], jobs: this.o.registry.jobsOf(r.id),
      };
    });
  }

  /** Queue a command for the agent's next poll. */
  send(agentId: string, c: AgentCommand): void {
    const a = this.agent(agentId);
    a.queue.push(c);
    a.wake?.();
  }

  /**
   * Ask the agent to run the cycle; resolves with its result. `signal` (pause, delete, shutdown) sends
   * it an abort and rejects with the signal's reason; an agent that stays silent fails the cycle.
   */
  runCycle(agentId: string, cmd: AgentCycleCommand, o: { signal: AbortSignal; onProgress(p: AgentProgress): void }): Promise<AgentCycleResult> {
    const early = this.unclaimed.get(cmd.cycleId);
    if (early) {
      this.unclaimed.delete(cmd.cycleId);
      if (early.r.ok) return Promise.resolve(early.r);
    }
    return new Promise<AgentCycleResult>((resolve, reject) => {
      const lostAfter = this.o.lostAfterMs ?? 90_000;
      const finish = (): void => { clearInterval(watch); o.signal.removeEventListener('abort', onAbort); this.expected.delete(cmd.cycleId); };
      const e: Expected = {
        agentId, lastHeard: Date.now(), onProgress: o.onProgress,
        resolve: (r) => { finish(); resolve(r); },
        reject: (x) => { finish(); reject(x); },
      };
      const onAbort = (): void => {
        this.send(agentId, { type: 'abort', cycleId: cmd.cycleId, reason: errorMessage(o.signal.reason) });
        e.reject(o.signal.reason);
      };
      const watch = setInterval(() => {
        const heard = Math.max(e.lastHeard, this.agents.get(agentId)?.polls ? Date.now() : this.agents.get(agentId)?.lastSeen ?? 0);
        if (Date.now() - heard > lostAfter) {
          e.reject(new UserError('AGENT_LOST', `agent ${agentId} went silent for ${Math.round(lostAfter / 1000)} s during cycle ${cmd.cycleId}`,
            `check that \`vmlift agent serve\` still runs on the source server and reaches the connector; the cycle resumes where it was (\`vmlift job resume ${cmd.jobId}\`)`, { transient: true }));
        }
      }, Math.min(5000, lostAfter / 3));
      this.expected.get(cmd.cycleId)?.reject(new UserError('SUPERSEDED', `cycle ${cmd.cycleId} was asked again`, 'none: the newer request for the same cycle waits for its result'));
      this.expected.set(cmd.cycleId, e);
      if (o.signal.aborted) { onAbort(); return; }
      o.signal.addEventListener('abort', onAbort, { once: true });
      this.send(agentId, cmd);
    });
  }

  /** Change the live settings of the agent's running cycle. */
  settings(agentId: string, cycleId: string, settings: Extract<AgentCommand, { type: 'settings' }>['settings']): void {
    this.send(agentId, { type: 'settings', cycleId, settings });
  }

  private agent(id: string): LiveAgent {
    let a = this.agents.get(id);
    if (!a) { a = { id, lastSeen: 0, polls: 0, queue: [] }; this.agents.set(id, a); }
    return a;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const send = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const url = new URL(req.url ?? '/', 'https://x');
    const id = req.headers[AGENT_ID_HEADER];
    const agentId = typeof id === 'string' ? id : undefined;
    try {
      if (!this.o.registry.authenticate(agentId, req.headers.authorization)) {
        this.o.logger.warn({ path: url.pathname, remote: req.socket.remoteAddress, agentId }, 'agent link: refused a request without a valid agent token');
        send(401, { error: { code: 'UNAUTHORIZED', message: 'missing or wrong agent token', fix: 'give the agent the token file `vmlift connector add-agent ID --token-out FILE` wrote, and the same agent id' } });
        return;
      }
      const a = this.agent(agentId!);
      a.lastSeen = Date.now();
      const body = req.method === 'POST' ? await readJson(req) : {};
      if (req.method === 'POST' && url.pathname === '/v1/agent/hello') {
        const h = body as unknown as AgentHello;
        if (h.agentId !== agentId) throw new UserError('BAD_REQUEST', `hello names agent ${h.agentId}, the token is ${agentId}'s`);
        a.hello = h;
        a.connectedAt = new Date().toISOString();
        this.o.logger.info({ agentId, hostname: h.hostname, devices: h.devices.length }, 'agent connected');
        for (const w of this.onlineWaiters) w();
        this.onlineWaiters.clear();
        send(200, { agentId, pollSeconds: AGENT_POLL_SECONDS });
        return;
      }
      if (req.method === 'GET' && url.pathname === '/v1/agent/commands') {
        if (!a.hello) throw new UserError('NO_HELLO', 'the agent polled before its hello', 'none: the agent says hello again by itself (the connector restarted); if it repeats, restart `vmlift agent serve`', { transient: true });
        const wait = Math.min(Math.max(Number(url.searchParams.get('wait') ?? AGENT_POLL_SECONDS) || 0, 0), 60);
        if (!a.queue.length && wait > 0) {
          a.polls++;
          await new Promise<void>((resolve) => {
            const t = setTimeout(done, wait * 1000);
            const onClose = (): void => done();
            function done(): void { clearTimeout(t); req.socket.off('close', onClose); resolve(); }
            a.wake = done;
            req.socket.once('close', onClose);
          });
          a.polls--;
          a.wake = undefined;
          a.lastSeen = Date.now();
        }
        if (res.destroyed || req.socket.destroyed) return; // the commands stay queued for the next poll
        const commands = a.queue.splice(0);
        send(200, { commands });
        return;
      }
      if (req.method === 'POST' && url.pathname === '/v1/agent/progress') {
        const p = body as unknown as AgentProgress;
        const e = this.expected.get(p.cycleId);
        if (e && e.agentId === agentId) { e.lastHeard = Date.now(); e.onProgress(p); }
        send(200, {});
        return;
      }
      if (req.method === 'POST' && url.pathname === '/v1/agent/result') {
        const r = body as unknown as AgentCycleResult;
        const e = this.expected.get(r.cycleId);
        if (e && e.agentId === agentId) e.resolve(r);
        else {
          const now = Date.now();
          for (const [k, v] of this.unclaimed) if (now - v.at > 600_000) this.unclaimed.delete(k);
          this.unclaimed.set(r.cycleId, { r, at: now });
        }
        send(200, {});
        return;
      }
      send(404, { error: { code: 'NOT_FOUND', message: `no such agent route: ${req.method} ${url.pathname}` } });
    } catch (e) {
      send(isTransient(e) ? 503 : isUserError(e) ? 409 : 500, { error: errorReport(e) });
    }
  }
}

const readJson = (req: IncomingMessage): Promise<Record<string, unknown>> => readJsonBody(req, 4 << 20);
