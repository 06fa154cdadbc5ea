/** The connector's agent sources, wired for `connector serve --agent-port`: registry, TLS identity, hub, runner. */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { readSecret } from '../util/secret.ts';
import { AgentRegistry } from '../engine/agent-registry.ts';
import { AgentHub } from '../engine/agent-hub.ts';
import { AgentSources } from '../engine/agent-source.ts';
import { loadOrCreateAgentTls } from '../engine/agent-tls.ts';
import type { AgentApi } from '../engine/agent-api.ts';
import type { ConnectorConfig } from './connector-config.ts';

export const agentsDir = (home: string): string => join(home, 'agents');
export const agentTlsDir = (home: string): string => join(home, 'agent-tls');

export async function createAgentWiring(home: string, config: ConnectorConfig, logger: Logger): Promise<AgentApi> {
  const registry = new AgentRegistry(agentsDir(home));
  const hub = new AgentHub({ registry, logger: logger.child({ component: 'agents' }), tls: await loadOrCreateAgentTls(agentTlsDir(home)) });
  const activationCode = await readSecret({ file: config.receiver.codeFile, what: 'activation code' });
  const sources = new AgentSources({
    hub, registry,
    receiver: { address: config.receiver.address, fingerprint: config.receiver.fingerprint, ...(config.receiver.dataPort ? { dataPort: config.receiver.dataPort } : {}) },
    ...(activationCode ? { activationCode } : {}),
  });
  return { registry, hub, sources };
}
