/** `vmlift connector add-agent` and `vmlift connector agents`: the agents a connector takes. */
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { connectorHome, callApi } from '../home.ts';
import { printResult, table, formatBytes } from '../output.ts';
import { AgentRegistry } from '../../engine/agent-registry.ts';
import { loadOrCreateAgentTls } from '../../engine/agent-tls.ts';
import { formatFingerprint } from '../../transfer/connect.ts';
import type { AgentSummary } from '../../engine/agent-hub.ts';
import { agentsDir, agentTlsDir } from '../agent-wiring.ts';

export function registerConnectorAgents(c: Command): void {
  c.command('add-agent').description('let an agent connect: writes its token (mode 0600) and prints the `agent serve` command for the source server')
    .argument('<id>', 'agent id ([a-z0-9-]); a new token replaces an earlier one')
    .requiredOption('--token-out <file>', 'where to write the token (copy it to the source server, e.g. /etc/vmlift/agent.token)')
    .option('--home <dir>', 'connector home (default $VMLIFT_HOME or ~/.vmlift)')
    .option('--json', 'print JSON')
    .action(async (id: string, f: { tokenOut: string; home?: string; json?: boolean }) => {
      const home = connectorHome(f.home);
      const tls = await loadOrCreateAgentTls(agentTlsDir(home));
      const rec = await new AgentRegistry(agentsDir(home)).addAgent(id, resolve(f.tokenOut));
      const fingerprint = formatFingerprint(tls.fingerprint);
      printResult(f.json, { agentId: rec.id, tokenFile: resolve(f.tokenOut), connectorFingerprint: fingerprint }, (v) =>
        `agent ${v.agentId}: token written to ${v.tokenFile}\non the source server run:\n  vmlift agent serve --connector https://THIS-CONNECTOR:8091 --connector-fingerprint ${fingerprint} --agent-id ${v.agentId} --token-file /etc/vmlift/agent.token`);
    });

  c.command('agents').description('the agents known to the running connector: connected or not, their devices and jobs')
    .option('--home <dir>', 'connector home (default $VMLIFT_HOME or ~/.vmlift)')
    .option('--json', 'print JSON')
    .action(async (f: { home?: string; json?: boolean }) => {
      const list = await callApi<AgentSummary[]>(connectorHome(f.home), 'GET', '/v1/agents');
      printResult(f.json, list, (l) => table(['AGENT', 'ONLINE', 'HOST', 'LAST SEEN', 'DEVICES', 'JOBS'], l.map((a) => [
        a.id, a.online ? 'yes' : 'no', a.hostname ?? '-', a.lastSeen ?? '-',
        a.devices.map((d) => `${d.path} ${formatBytes(d.size)}${d.model ? ` ${d.model}` : ''}${d.mounts.length ? ` [${d.mounts.join(' ')}]` : ''}`).join(', ') || '-', a.jobs.join(' ') || '-'])));
    });
}
