/**
 * `vmlift connector init|serve`: the long-running process beside vCenter that runs the agentless jobs.
 */
import type { Command } from 'commander';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile, rm } from 'node:fs/promises';
import { UserError } from '../../util/errors.ts';
import { createLogger } from '../../util/log.ts';
import { writeFileAtomic } from '../../util/fsync.ts';
import { openStateStore } from '../../state/sqlite.ts';
import { JobEngine } from '../../engine/jobs.ts';
import { Scheduler } from '../../engine/scheduler.ts';
import { Workgroups } from '../../engine/workgroups.ts';
import { JobDrills } from '../../engine/drills.ts';
import { EngineMetrics } from '../../engine/metrics.ts';
import { ConnectorApi } from '../../engine/api.ts';
import { connectorHome, callApi } from '../home.ts';
import { inventoryView } from '../../console/inventory-view.ts';
import { DEFAULT_LIMITS, keepSecret, readConnectorConfig, writeConnectorConfig } from '../connector-config.ts';
import { createWiring } from '../wiring.ts';
import { printResult } from '../output.ts';
import { checkNbdCommand } from '../../source/nbd-server.ts';
import { apiListenHost } from '../../engine/api-access.ts';
import { formatFingerprint, normalizeFingerprint } from '../../transfer/connect.ts';
import { createAgentWiring } from '../agent-wiring.ts';
import { loadOrCreateAgentTls } from '../../engine/agent-tls.ts';
import { registerConnectorAgents } from './connector-agents.ts';
import { receiverLines } from '../receiver-lines.ts';
import type { ReceiverFiguresResponse } from '../../engine/receiver-figures.ts';

interface InitFlags {
  home?: string; server: string; user: string; passwordFile: string; thumbprint?: string; insecure?: boolean;
  receiver: string; fingerprint: string; codeFile: string; dataPort?: string; proxy?: string; proxyPasswordFile?: string;
  disksPerHost: string; disksOverall: string; maxReadMib: string; json?: boolean;
  vddkLibdir?: string; vddkConfig?: string; vddkTransports?: string; nbdCommand?: string;
}

function positiveInt(v: string, flag: string, max: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new UserError('BAD_FLAG', `${flag} must be a whole number from 1 to ${max}, got ${v}`, `pass ${flag} 1..${max}`);
  return n;
}

function parseNbdCommand(json: string): string[] {
  let v: unknown;
  try { v = JSON.parse(json); } catch (e) {
    throw new UserError('BAD_NBD_COMMAND', `--nbd-command is not JSON: ${(e as Error).message}`, 'pass a JSON array, e.g. \'["nbdkit","--unix","{socket}","--foreground",…]\'');
  }
  return checkNbdCommand(v, '--nbd-command');
}

async function apiToken(home: string): Promise<string> {
  const path = join(home, 'api-token');
  try {
    return (await readFile(path, 'utf8')).trim();
  } catch {
    const token = randomBytes(24).toString('base64url');
    await writeFile(path, `${token}\n`, { mode: 0o600 });
    return token;
  }
}

export function register(program: Command): void {
  const c = program.command('connector').description('the long-running process beside vCenter that runs agentless jobs');

  c.command('init').description('write the connector\'s configuration (secrets are copied into its home, mode 0600)')
    .option('--home <dir>', 'connector home (default $VMLIFT_HOME or ~/.vmlift)')
    .requiredOption('--server <url>', 'vCenter, https://VCENTER/sdk')
    .requiredOption('--user <user>', 'vCenter user')
    .requiredOption('--password-file <file>', 'file holding the vCenter password')
    .option('--thumbprint <sha>', 'pin vCenter\'s certificate (SHA-1 or SHA-256)')
    .option('--insecure', 'do not verify vCenter\'s certificate (lab only)')
    .requiredOption('--receiver <host[:port]>', 'the vmlift receiver (control port, default 8080)')
    .requiredOption('--fingerprint <sha256>', 'the receiver certificate\'s SHA-256 fingerprint')
    .requiredOption('--code-file <file>', 'file holding the receiver\'s activation code')
    .option('--data-port <port>', 'receiver data port (default: what the receiver advertises)')
    .option('--proxy <url>', 'HTTP CONNECT proxy to reach the receiver')
    .option('--proxy-password-file <file>', 'file holding the proxy password')
    .option('--disks-per-host <n>', 'disks read at once per ESXi host', String(DEFAULT_LIMITS.disksPerHost))
    .option('--disks-overall <n>', 'disks read at once in all', String(DEFAULT_LIMITS.disksOverall))
    .option('--max-read-mib <n>', 'largest single disk read in MiB (VMware NFC through vCenter: 2)', '2')
    .option('--vddk-libdir <dir>', 'VMware VDDK folder (holding lib64/libvixDiskLib.so): jobs with transport auto read through VDDK')
    .option('--vddk-config <file>', 'VDDK configuration file for InitEx')
    .option('--vddk-transports <modes>', 'VDDK transport modes in order (default nbdssl:nbd; e.g. hotadd:nbdssl:nbd)')
    .option('--nbd-command <json>', 'NBD server command template, a JSON array with {socket} {server} {port} {user} {passwordFile} {thumbprint} {vm} {snapshot} {file} {diskKey} {transports} {libdir} (default: nbdkit vddk)')
    .option('--json', 'print JSON')
    .action(async (f: InitFlags) => {
      const home = connectorHome(f.home);
      if (f.thumbprint && f.insecure) throw new UserError('VC_TRUST', '--thumbprint and --insecure exclude each other', 'keep --thumbprint and drop --insecure');
      const config = {
        vcenter: {
          server: f.server, user: f.user, passwordFile: await keepSecret(home, 'vcenter-password', f.passwordFile),
          ...(f.thumbprint ? { thumbprint: f.thumbprint } : {}), ...(f.insecure ? { insecure: true } : {}),
        },
        receiver: {
          address: f.receiver, fingerprint: f.fingerprint, codeFile: await keepSecret(home, 'activation-code', f.codeFile),
          ...(f.dataPort ? { dataPort: positiveInt(f.dataPort, '--data-port', 65535) } : {}),
          ...(f.proxy ? { proxy: f.proxy } : {}),
          ...(f.proxyPasswordFile ? { proxyPasswordFile: await keepSecret(home, 'proxy-password', f.proxyPasswordFile) } : {}),
        },
        limits: {
          disksPerHost: positiveInt(f.disksPerHost, '--disks-per-host', 64), disksOverall: positiveInt(f.disksOverall, '--disks-overall', 1024),
          maxConcurrentJobs: DEFAULT_LIMITS.maxConcurrentJobs,
        },
        maxReadSize: positiveInt(f.maxReadMib, '--max-read-mib', 64) << 20,
        ...(f.vddkLibdir ? { vddkLibdir: resolve(f.vddkLibdir) } : {}),
        ...(f.vddkConfig ? { vddkConfigFile: resolve(f.vddkConfig) } : {}),
        ...(f.vddkTransports ? { vddkTransports: f.vddkTransports } : {}),
        ...(f.nbdCommand ? { nbd: { command: parseNbdCommand(f.nbdCommand) } } : {}),
      };
      await writeConnectorConfig(home, config);
      printResult(f.json, { home, config }, () => `wrote ${join(home, 'config.json')}; start the connector with: vmlift connector serve --home ${home}`);
    });

  c.command('set').description('change the receiver\'s pinned fingerprint (after `vmlift receiver rotate-cert`); restart the connector to use it')
    .option('--home <dir>', 'connector home (default $VMLIFT_HOME or ~/.vmlift)')
    .requiredOption('--fingerprint <sha256>', 'the receiver certificate\'s new SHA-256 fingerprint (`vmlift receiver info` on the receiver)')
    .option('--json', 'print JSON')
    .action(async (f: { home?: string; fingerprint: string; json?: boolean }) => {
      const home = connectorHome(f.home);
      const config = await readConnectorConfig(home);
      const before = formatFingerprint(normalizeFingerprint(config.receiver.fingerprint));
      const fingerprint = formatFingerprint(normalizeFingerprint(f.fingerprint));
      await writeConnectorConfig(home, { ...config, receiver: { ...config.receiver, fingerprint } });
      printResult(f.json, { home, previousFingerprint: before, fingerprint }, (v) =>
        `the receiver's fingerprint is now ${v.fingerprint} (was ${v.previousFingerprint}); restart the connector (vmlift connector serve --home ${home}) to use it`);
    });

  registerConnectorAgents(c);
  c.command('console-url').description('print a one-time login link to the web console (valid 10 minutes, once)')
    .option('--home <dir>', 'connector home (default $VMLIFT_HOME or ~/.vmlift)')
    .option('--json', 'print JSON')
    .action(async (f: { home?: string; json?: boolean }) => {
      const link = await callApi<{ url: string; remoteUrl?: string; expiresAt: string }>(connectorHome(f.home), 'POST', '/v1/session/links');
      printResult(f.json, link, (v) => `${v.url}\n${v.remoteUrl ? `${v.remoteUrl}   (from another machine, over TLS)\n` : ''}(one use, valid until ${v.expiresAt})`);
    });

  c.command('receivers').description('the receiver\'s free space, stored bytes and dedup ratio, as the running connector reads them')
    .option('--home <dir>', 'connector home (default $VMLIFT_HOME or ~/.vmlift)')
    .option('--json', 'print JSON')
    .action(async (f: { home?: string; json?: boolean }) => {
      const v = await callApi<ReceiverFiguresResponse>(connectorHome(f.home), 'GET', '/v1/receivers');
      printResult(f.json, v, receiverLines);
      if (v.receivers.some((r) => !r.reachable)) process.exitCode = 1;
    });

  c.command('serve').description('run the scheduler, the local API (for the CLI) and /metrics; resumes unfinished cycles after a restart')
    .option('--home <dir>', 'connector home (default $VMLIFT_HOME or ~/.vmlift)')
    .option('--api-port <port>', 'local API port on 127.0.0.1 (0 = any free port)', '8090')
    .option('--api-listen <host>', 'local API address: loopback only (127.0.0.1, ::1); the API is plain HTTP with a token', '127.0.0.1')
    .option('--tick-ms <ms>', 'how often the scheduler looks for due jobs', '1000')
    .option('--log-stderr', 'log to stderr instead of the rotated file')
    .option('--agent-port <port>', 'take agent sources: the TLS port `vmlift agent serve` dials out to (e.g. 8091; 0 = any free port)')
    .option('--agent-listen <host>', 'address of the agent port', '0.0.0.0')
    .option('--listen <host:port>', 'also serve the API and the web console to other machines, over TLS with the connector\'s own certificate (e.g. 0.0.0.0:8443)')
    .action(async (f: { home?: string; apiPort: string; apiListen: string; tickMs: string; logStderr?: boolean; agentPort?: string; agentListen: string; listen?: string }) => {
      const apiHost = apiListenHost(f.apiListen);
      const remote = f.listen !== undefined ? parseListen(f.listen) : undefined;
      const home = connectorHome(f.home);
      const config = await readConnectorConfig(home);
      const logger = createLogger(f.logStderr ? {} : { rotate: { base: join(home, 'logs', 'connector') } }, { component: 'connector' });
      const state = openStateStore(join(home, 'state.db'));
      const wiring = await createWiring(home, config, logger);
      const metrics = new EngineMetrics(state);
      const agents = f.agentPort !== undefined ? await createAgentWiring(home, config, logger) : undefined;
      const engine = new JobEngine({ state, connect: wiring.connect, logger, events: metrics.events,
        ...(agents ? { agents: agents.sources } : {}), ...(config.retry ? { retry: config.retry } : {}) });
      const workgroups = new Workgroups(engine);
      const drills = new JobDrills({ state, service: wiring.drills, reportRoot: join(home, 'drills'), logger: logger.child({ component: 'drills' }) });
      drills.resume();
      const api = new ConnectorApi({ engine, workgroups, metrics, logger, token: await apiToken(home), resolveVm: wiring.resolveVm, preflight: wiring.preflight, images: wiring.images, receivers: wiring.receivers, drills,
        inventory: async () => inventoryView(await wiring.vc.inventory()), ...(agents ? { agents } : {}) });
      const addr = await api.listen(Number(f.apiPort), apiHost);
      const agentAddr = agents ? await agents.hub.listen(Number(f.agentPort), f.agentListen) : undefined;
      const tls = remote ? await loadOrCreateAgentTls(join(home, 'agent-tls')) : undefined;
      const remoteAddr = remote && tls ? await api.listenTls(remote.port, remote.host, tls) : undefined;
      await writeFileAtomic(join(home, 'api.json'), JSON.stringify({ port: addr.port, pid: process.pid, ...(agentAddr ? { agentPort: agentAddr.port } : {}), ...(remoteAddr ? { tlsPort: remoteAddr.port } : {}) }));
      const scheduler = new Scheduler(engine, { logger, tickMs: Number(f.tickMs), maxConcurrentJobs: config.limits.maxConcurrentJobs });
      const interrupted = state.runningCycles();
      if (interrupted.length) logger.info({ cycles: interrupted.map((x) => `${x.jobId}/${x.id}`) }, 'resuming cycles cut short by a restart');
      scheduler.start();
      logger.info({ port: addr.port, home }, 'connector started');
      if (agents && agentAddr) process.stderr.write(`vmlift connector: agents connect to https://${f.agentListen}:${agentAddr.port} (TLS, fingerprint ${formatFingerprint(agents.hub.fingerprint)})\n`);
      if (remote && remoteAddr && tls) process.stderr.write(`vmlift connector: console for other machines at https://${remote.host.includes(':') ? `[${remote.host}]` : remote.host}:${remoteAddr.port}/console/ (TLS, certificate fingerprint ${formatFingerprint(tls.fingerprint)})\n`);
      process.stderr.write(`vmlift connector: API on http://${apiHost.includes(':') ? `[${apiHost}]` : apiHost}:${addr.port}, console at /console/ (login link: vmlift connector console-url), metrics at /metrics, logs in ${join(home, 'logs')}\n`);
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once('SIGTERM', stop);
        process.once('SIGINT', stop);
      });
      logger.info('connector stopping');
      await scheduler.stop({ abort: true });
      await api.close();
      await agents?.hub.close();
      await drills.close();
      await rm(join(home, 'api.json'), { force: true });
      await wiring.close().catch(() => undefined);
      state.close();
      logger.flush?.();
    });
}

/** `--listen HOST:PORT` (IPv6 as `[::]:8443`). */
function parseListen(v: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(v.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) {
    throw new UserError('BAD_LISTEN', `--listen ${JSON.stringify(v)} is not HOST:PORT`, 'give an address and a port, e.g. --listen 0.0.0.0:8443 or --listen [::]:8443');
  }
  return { host: m[1] ?? m[2]!, port };
}
