/**
 * `vmlift agent serve` (the agent driven by the connector) and `vmlift agent check` (its preflight),
 * both reading /etc/vmlift/agent.json (or --config) with flags overriding each field.
 */
import { Option, type Command } from 'commander';
import { UserError } from '../../util/errors.ts';
import { readSecret } from '../../util/secret.ts';
import { assertId } from '../../util/ids.ts';
import { createLogger } from '../../util/log.ts';
import { parseDuration } from '../../util/duration.ts';
import { parseProxy } from '../../transfer/connect.ts';
import { loadAgentConfig, proxyUrl, type AgentConfig } from '../../agent/config.ts';
import { runAgentChecks } from '../../agent/check.ts';
import { serveAgent } from '../../agent/serve.ts';
import { ConnectorLink } from '../../agent/connector-link.ts';
import { defaultSourceId } from '../../agent/device-cycle.ts';
import type { AgentCycleResult } from '../../transfer/agent-link.ts';
import { table } from '../output.ts';

interface CommonFlags {
  config?: string;
  device: string[];
  receiver?: string;
  fingerprint?: string;
  dataPort?: string;
  proxy?: string;
  proxyPasswordFile?: string;
  stateDir?: string;
  json?: boolean;
}

interface ServeFlags extends CommonFlags {
  connector?: string;
  connectorFingerprint?: string;
  tokenFile?: string;
  agentId?: string;
  codeFile?: string;
  ignoreCheck?: boolean;
  retryFor: string;
  logLevel: string;
  windowMib?: string;
  progressMs?: string;
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

function port(v: string | number | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!(Number.isInteger(n) && n > 0 && n < 65536)) throw new UserError('BAD_ARGS', `${what} ${v} is not a port 1..65535`, `pass ${what} with a port, e.g. 8703`);
  return n;
}

/** Flags over the config file, field by field. */
async function merged(f: CommonFlags, defaultStateDir: string): Promise<{ c: AgentConfig; devices: string[]; stateDir: string; proxy?: string; proxyPassword?: string; dataPort?: number }> {
  const { config: c } = await loadAgentConfig(f.config);
  const devices = f.device.length ? f.device : c.devices ?? [];
  const proxy = f.proxy ?? (c.proxy ? proxyUrl(c.proxy) : undefined);
  const proxyPassword = proxy ? await readSecret({ file: f.proxyPasswordFile ?? c.proxy?.passwordFile, env: 'VMLIFT_PROXY_PASSWORD', what: 'proxy password' }) : undefined;
  if (proxy) parseProxy(proxy, proxyPassword);
  const dataPort = port(f.dataPort, '--data-port') ?? c.dataPort;
  return {
    c: { ...c, ...(f.receiver ? { receiver: f.receiver } : {}), ...(f.fingerprint ? { fingerprint: f.fingerprint } : {}) },
    devices, stateDir: f.stateDir ?? c.stateDir ?? defaultStateDir,
    ...(proxy ? { proxy } : {}), ...(proxyPassword !== undefined ? { proxyPassword } : {}), ...(dataPort ? { dataPort } : {}),
  };
}

const commonFlags = (c: Command, defaultStateDir: string): Command => c
  .option('--config <file>', 'agent config file (default /etc/vmlift/agent.json, or VMLIFT_AGENT_CONFIG); flags override its fields')
  .option('--device <path>', 'block device or disk image file the agent may read; repeat per disk (default: "devices" of the config)', collect, [])
  .option('--receiver <host[:port]>', 'the receiver\'s control address (default: the config\'s, else the connector\'s)')
  .option('--fingerprint <sha256>', 'the receiver certificate\'s SHA-256 fingerprint')
  .option('--data-port <port>', 'the receiver\'s data port, when it is reached on another port than 8703')
  .option('--proxy <url>', 'HTTP CONNECT proxy http://[user@]host:port (to the connector and the receiver)')
  .option('--proxy-password-file <file>', 'file holding the proxy password (or VMLIFT_PROXY_PASSWORD)')
  .option('--state-dir <dir>', `agent state (default: the config's "stateDir", else ${defaultStateDir})`)
  .option('--json', 'JSON output');

export function registerAgentServe(agent: Command, defaultStateDir: () => string): void {
  commonFlags(agent.command('serve'), defaultStateDir())
    .description('Run as the connector\'s agent: dial out to it, report the devices, run the cycles it asks for (data goes straight to the receiver)')
    .option('--connector <url>', 'the connector\'s agent port, https://CONNECTOR:8091 (default: "connector.url" of the config)')
    .option('--connector-fingerprint <sha256>', 'the connector certificate\'s SHA-256 fingerprint (printed by `vmlift connector add-agent`)')
    .option('--token-file <file>', 'file holding the agent token `vmlift connector add-agent` wrote (or VMLIFT_AGENT_TOKEN)')
    .option('--agent-id <id>', 'this agent\'s id at the connector (default: the config\'s "agentId", else the host name)')
    .option('--code-file <file>', 'receiver activation code (default: the connector sends its own to a source not yet registered)')
    .option('--ignore-check', 'run a first cycle even when the preflight (`vmlift agent check`) fails')
    .option('--retry-for <duration>', 'keep reconnecting to the receiver to resume a cycle this long', '10m')
    .option('--log-level <level>', 'log level (JSON on stderr)', 'info')
    .addOption(new Option('--window-mib <n>', 'unacknowledged data kept for resend, MiB').hideHelp())
    .addOption(new Option('--progress-ms <n>', 'progress report interval').hideHelp())
    .action(async (f: ServeFlags) => { await serve(f, defaultStateDir()); });

  commonFlags(agent.command('check'), defaultStateDir())
    .description('Preflight: root, devices readable, state space, receiver ports 8080/8703 (or through the proxy), clock skew, and target hints; a fix for each failure')
    .option('--no-hints', 'leave out the target readiness hints (virtio, GRUB, SELinux, cloud-init)')
    .action(async (f: CommonFlags & { hints: boolean }) => {
      const m = await merged(f, defaultStateDir());
      const checks = await runAgentChecks({
        devices: m.devices, stateDir: m.stateDir, proxy: m.proxy, proxyPassword: m.proxyPassword, hints: f.hints,
        ...(m.c.receiver && m.c.fingerprint ? { receiver: { address: m.c.receiver, fingerprint: m.c.fingerprint, ...(m.dataPort ? { dataPort: m.dataPort } : {}) } } : {}),
      });
      const failed = checks.filter((c) => c.status === 'fail').length;
      if (f.json) process.stdout.write(`${JSON.stringify({ ok: failed === 0, checks }, null, 2)}\n`);
      else {
        process.stdout.write(`${table(['CHECK', 'RESULT', 'DETAIL', 'FIX'], checks.map((c) => [c.name, c.status, c.message, c.fix ?? '']))}\n`);
        process.stdout.write(failed ? `${failed} check(s) failed: a first cycle refuses to start until they pass (or \`agent serve --ignore-check\`)\n` : 'all checks passed\n');
      }
      if (failed) process.exitCode = 1;
    });
}

async function serve(f: ServeFlags, defaultStateDir: string): Promise<void> {
  const m = await merged(f, defaultStateDir);
  const url = f.connector ?? m.c.connector?.url;
  if (!url) throw new UserError('BAD_ARGS', 'no connector given', 'pass --connector https://CONNECTOR:8091, or set "connector": {"url": …} in /etc/vmlift/agent.json');
  const fingerprint = f.connectorFingerprint ?? m.c.connector?.fingerprint;
  if (!fingerprint) throw new UserError('BAD_ARGS', 'no connector fingerprint given: the agent pins the connector\'s certificate', 'pass --connector-fingerprint FP (printed by `vmlift connector add-agent`), or set "connector.fingerprint" in agent.json');
  const tokenFile = f.tokenFile ?? m.c.connector?.tokenFile;
  const token = await readSecret({ file: tokenFile, env: 'VMLIFT_AGENT_TOKEN', what: 'agent token' });
  if (!token) throw new UserError('AGENT_TOKEN', 'no agent token', 'pass --token-file FILE (written by `vmlift connector add-agent ID --token-out FILE`), "connector.tokenFile" in agent.json, or set VMLIFT_AGENT_TOKEN');
  const agentId = assertId(f.agentId ?? m.c.agentId ?? defaultSourceId(), 'agent id');
  const code = await readSecret({ file: f.codeFile ?? m.c.codeFile, env: 'VMLIFT_ACTIVATION_CODE', what: 'activation code' });
  const logger = createLogger({ level: f.logLevel }, { component: 'agent', agentId });
  const link = new ConnectorLink({ url, fingerprint, agentId, token, proxy: m.proxy ? parseProxy(m.proxy, m.proxyPassword) : undefined });
  const stop = new AbortController();
  const onSignal = (): void => stop.abort(new UserError('INTERRUPTED', 'the agent was stopped; an open cycle resumes when it runs again', undefined, { exitCode: 130 }));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const printCycle = (r: AgentCycleResult): void => {
    if (f.json) process.stdout.write(`${JSON.stringify({ type: 'cycle', ...r })}\n`);
    else process.stderr.write(r.ok ? `vmlift agent: cycle ${r.cycleId}: image ${r.image?.imageId} committed\n` : `vmlift agent: cycle ${r.cycleId} failed in ${r.step}: ${r.error?.message}${r.error?.fix ? `\nfix: ${r.error.fix}` : ''}\n`);
  };
  process.stderr.write(`vmlift agent ${agentId}: serving ${url}${m.devices.length ? ` (devices ${m.devices.join(', ')})` : ''}\n`);
  try {
    await serveAgent({
      link, agentId, devices: m.devices, stateDir: m.stateDir, logger, signal: stop.signal,
      receiver: { address: m.c.receiver, fingerprint: m.c.fingerprint, dataPort: m.dataPort },
      code, proxy: m.proxy, proxyPassword: m.proxyPassword, ignoreCheck: !!(f.ignoreCheck ?? m.c.ignoreCheck),
      retryForMs: parseDuration(f.retryFor, '--retry-for') * 1000, onCycle: printCycle,
      ...(f.windowMib ? { windowBytes: Math.max(1, Number(f.windowMib)) << 20 } : {}),
      ...(f.progressMs ? { progressMs: Number(f.progressMs) } : {}),
    });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
