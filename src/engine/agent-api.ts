/**
 * The connector API's routes for agent sources (registered by api.ts when the connector takes agents):
 *   GET  /v1/agents  → AgentSummary[]
 * and the agent form of `POST /v1/jobs` ({id, agent, devices?, template?, settings?} → JobRecord of kind agent).
 */
import { UserError } from '../util/errors.ts';
import { assertId } from '../util/ids.ts';
import type { JobSettings } from '../state/types.ts';
import { parseSettings, resolveSettings, type SettingsInput } from './settings.ts';
import type { JobEngine } from './jobs.ts';
import type { AgentHub } from './agent-hub.ts';
import type { AgentRegistry } from './agent-registry.ts';
import type { AgentSources } from './agent-source.ts';

type Route = (method: string, re: RegExp, h: (req: unknown, params: string[], body: Record<string, unknown>) => unknown) => void;

export interface AgentApi {
  registry: AgentRegistry;
  hub: AgentHub;
  sources: AgentSources;
}

export function registerAgentRoutes(route: Route, engine: JobEngine, a: AgentApi): void {
  // jobs.json may still name a deleted job: only jobs that exist are listed
  route('GET', /^\/v1\/agents$/, () => a.hub.list().map((x) => ({ ...x, jobs: x.jobs.filter((j) => engine.state.getJob(j)) })));
}

/** `job create ID --agent AGENT [--devices …]`; refused when the connector takes no agents. */
export function createAgentJob(engine: JobEngine, a: AgentApi | undefined, b: Record<string, unknown>, template: (name: string) => Partial<JobSettings>): unknown {
  if (!a) throw new UserError('NO_AGENT_HUB', 'this connector takes no agents', 'restart it with `vmlift connector serve --agent-port 8091` (the port agents dial out to)');
  const id = assertId(String(b.id ?? ''), 'job id');
  const agentId = assertId(String(b.agent ?? ''), 'agent id');
  if (!a.registry.get(agentId)) {
    throw new UserError('NO_AGENT', `no agent named ${agentId} is known to this connector`,
      `add it with \`vmlift connector add-agent ${agentId} --token-out FILE\` and start \`vmlift agent serve\` on the source server with that token`);
  }
  const devices = parseDevices(b.devices);
  const t = b.template ? template(String(b.template)) : undefined;
  const settings = resolveSettings(t, parseSettings((b.settings ?? {}) as SettingsInput));
  const job = engine.createJob({
    id, name: b.name === undefined ? agentId : String(b.name), description: b.description === undefined ? '' : String(b.description),
    kind: 'agent', vmRef: null, settings,
  });
  a.registry.bind(id, { agentId, devices });
  // Bound before it starts, so its first cycle finds its agent (a job starts when it is created unless start: false).
  return b.start === false ? job : engine.start(id);
}

function parseDevices(v: unknown): string[] {
  if (v === undefined || v === null || v === '') return [];
  const list = Array.isArray(v) ? v.map(String) : String(v).split(',');
  const out = list.map((d) => d.trim()).filter(Boolean);
  for (const d of out) {
    if (!d.startsWith('/')) throw new UserError('BAD_DEVICES', `device ${JSON.stringify(d)} is not an absolute path`, 'pass --devices /dev/sda,/dev/sdb');
  }
  if (new Set(out).size !== out.length) throw new UserError('BAD_DEVICES', `--devices names a device twice: ${out.join(',')}`, 'name each device once');
  return out;
}
