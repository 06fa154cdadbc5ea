/**
 * `vmlift agent sync`: ship this machine's block devices (or disk image files) to a vmlift
 * receiver, one image per cycle, incrementally after the first.
 */
import { Command, Option } from 'commander';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { UserError, errorReport } from '../../util/errors.ts';
import { readSecret } from '../../util/secret.ts';
import { assertId } from '../../util/ids.ts';
import { createLogger } from '../../util/log.ts';
import { parseDuration, formatDuration } from '../../util/duration.ts';
import { parseSettings } from '../../engine/settings.ts';
import { openSources } from '../../source/open.ts';
import { AgentState } from '../../agent/state.ts';
import { runDeviceCycle, defaultSourceId, type CycleReport } from '../../agent/device-cycle.ts';
import { connectAgentSender, type AgentConnectOptions } from '../../agent/connect.ts';
import { Progress } from '../progress.ts';
import { registerAgentServe } from './agent-serve.ts';
import { loadAgentConfig, proxyUrl } from '../../agent/config.ts';
import { formatBytes, table } from '../output.ts';

interface SyncFlags {
  config?: string;
  device: string[];
  receiver?: string;
  fingerprint?: string;
  codeFile?: string;
  once?: boolean;
  interval?: string;
  testIntervalSeconds?: string;
  windowMib?: string;
  dataPort?: string;
  compression: string;
  bandwidth: string;
  checksum?: boolean;
  maxImages?: string;
  proxy?: string;
  proxyPasswordFile?: string;
  stateDir?: string;
  sourceId?: string;
  retryFor: string;
  json?: boolean;
  logLevel?: string;
}

function dataPortOption(v: string): number {
  const n = Number(v);
  if (!(Number.isInteger(n) && n > 0 && n < 65536)) throw new UserError('BAD_ARGS', `--data-port ${v} is not a port 1..65535`, 'pass the receiver\'s data port, e.g. --data-port 8703');
  return n;
}

function defaultStateDir(): string {
  return process.getuid?.() === 0 ? '/var/lib/vmlift-agent' : join(process.env.XDG_STATE_HOME ?? join(homedir(), '.local', 'state'), 'vmlift-agent');
}

const collect = (v: string, prev: string[]): string[] => [...prev, v];

export function register(program: Command): void {
  const agent = program.command('agent').description('Agent-based source: ship this machine\'s block devices to a vmlift receiver');
  agent.command('sync')
    .description('Sync block devices or disk image files to a receiver: one image per cycle, all devices in it (disk n = nth --device)')
    .option('--config <file>', 'agent config file (default /etc/vmlift/agent.json, or VMLIFT_AGENT_CONFIG); flags override its fields')
    .option('--device <path>', 'block device or disk image file; repeat for each disk (default: "devices" of the config)', collect, [])
    .option('--receiver <host[:port]>', 'receiver control address (port default 8080)')
    .option('--data-port <port>', 'receiver data port, when it differs from the one the receiver advertises (a port forward)')
    .option('--fingerprint <sha256>', 'receiver certificate SHA-256 fingerprint (from `vmlift receiver info`)')
    .option('--code-file <file>', 'file holding the activation code (or set VMLIFT_ACTIVATION_CODE); needed until the source is registered')
    .option('--once', 'run one cycle and exit')
    .option('--interval <duration>', 'run a cycle every DURATION, 1h to 7d (e.g. 1h, 12h, 1d)')
    .addOption(new Option('--test-interval-seconds <n>', 'sub-hour interval, for tests only').hideHelp())
    .addOption(new Option('--window-mib <n>', 'unacknowledged data kept for resend, MiB (default 64)').hideHelp())
    .option('--compression <0-10>', 'compression level, 0 = none', '7')
    .option('--bandwidth <mbps>', 'bandwidth limit in Mbit/s on wire bytes, 0 = unlimited', '0')
    .option('--checksum', 'verify each committed image against whole-disk SHA-256 computed while reading')
    .option('--max-images <1-10>', 'images the receiver keeps for this source (oldest removed first)')
    .option('--proxy <url>', 'reach the receiver through an HTTP CONNECT proxy: http://[user@]host:port')
    .option('--proxy-password-file <file>', 'file holding the proxy password (or set VMLIFT_PROXY_PASSWORD)')
    .option('--state-dir <dir>', `agent state: credential, open cycle, block digests of the last image (default ${defaultStateDir()})`)
    .option('--source-id <id>', 'name of this source on the receiver ([a-z0-9-]; default: the host name)')
    .option('--retry-for <duration>', 'keep reconnecting to resume a cycle for this long', '10m')
    .option('--log-level <level>', 'log level (logs are JSON on stderr)', 'warn')
    .option('--json', 'progress and results as JSON lines on stdout')
    .action(async (flags: SyncFlags) => { await sync(flags); });
  registerAgentServe(agent, defaultStateDir);
}

async function sync(flags: SyncFlags): Promise<void> {
  const f = await withConfig(flags);
  if (f.once && (f.interval || f.testIntervalSeconds)) {
    throw new UserError('BAD_ARGS', '--once and --interval exclude each other', 'pass --once for one cycle, or --interval for a cycle every interval');
  }
  if (!f.once && !f.interval && !f.testIntervalSeconds) {
    throw new UserError('BAD_ARGS', 'neither --once nor --interval given: say how often to sync', 'pass --once for one cycle, or --interval 1h (1h to 7d) to keep syncing');
  }
  const settings = parseSettings({ compression: f.compression, bandwidth: f.bandwidth, ...(f.maxImages !== undefined ? { maxImages: f.maxImages } : {}), ...(f.interval ? { interval: f.interval } : {}) });
  let intervalMs = (settings.intervalSeconds ?? 0) * 1000;
  if (f.testIntervalSeconds) intervalMs = Number(f.testIntervalSeconds) * 1000;
  const retryForMs = parseDuration(f.retryFor, '--retry-for') * 1000;
  const sourceId = assertId(f.sourceId ?? defaultSourceId(), 'source id');
  if (f.device.length === 0) throw new UserError('BAD_ARGS', 'no --device given', 'pass --device PATH once per disk, or set "devices" in /etc/vmlift/agent.json');
  const code = await readSecret({ file: f.codeFile, env: 'VMLIFT_ACTIVATION_CODE', what: 'activation code' })
    ?? await readSecret({ env: 'VMLIFT_CODE', what: 'activation code' });
  const proxyPassword = f.proxy ? await readSecret({ file: f.proxyPasswordFile, env: 'VMLIFT_PROXY_PASSWORD', what: 'proxy password' }) : undefined;
  const logger = createLogger({ level: f.logLevel }, { component: 'agent', sourceId });
  const state = await AgentState.open(f.stateDir ?? defaultStateDir());

  const connectOpts: AgentConnectOptions = {
    receiver: f.receiver, fingerprint: f.fingerprint, sourceId, code,
    credentialPath: state.credentialPath,
    proxy: f.proxy, proxyPassword,
    compression: settings.compression ?? 7, bandwidthMbps: settings.bandwidthMbps ?? 0,
    checksum: !!f.checksum, logger, resumeTimeoutMs: retryForMs,
    ...(f.windowMib ? { windowBytes: Math.max(1, Number(f.windowMib)) * 1024 * 1024 } : {}),
    ...(f.dataPort ? { dataPort: dataPortOption(f.dataPort) } : {}),
  };
  const progressMs = Number(process.env.VMLIFT_PROGRESS_INTERVAL_MS) || undefined;
  const progress = new Progress({ json: f.json, ...(progressMs ? { intervalMs: progressMs } : {}) });
  const stop = new AbortController();
  const onSignal = (): void => stop.abort(new UserError('INTERRUPTED', 'interrupted; the open cycle resumes on the next run', undefined, { exitCode: 130 }));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    for (;;) {
      const started = Date.now();
      const sources = await openSources(f.device);
      let report: CycleReport;
      try {
        report = await runDeviceCycle({
          sources, state, logger, retryForMs, signal: stop.signal,
          checksum: !!f.checksum, maxImages: settings.maxImages,
          connect: () => connectAgentSender(connectOpts),
          onProgress: (p) => progress.update(`disk${p.disk}`, {
            label: `disk ${p.disk} ${p.label}`, done: p.done, total: p.total,
            extra: { changed: p.changed, sent: p.payloadBytes, wire: p.wireBytes, resent: p.resentBytes },
          }),
        });
      } catch (e) {
        progress.finish();
        if (f.once || stop.signal.aborted) throw e;
        const wait = Math.min(intervalMs, 5 * 60_000);
        const report = errorReport(e);
        logger.error({ err: report.message, errCode: report.code }, 'cycle failed; retrying later');
        if (f.json) process.stdout.write(`${JSON.stringify({ type: 'error', ...report, retryInSec: wait / 1000 })}\n`);
        else process.stderr.write(`vmlift: cycle failed: ${(e as Error).message}; retrying in ${formatDuration(wait / 1000)}\n`);
        await sleep(wait, stop.signal);
        continue;
      } finally {
        await Promise.all(sources.map((s) => s.close()));
      }
      progress.finish();
      printReport(report, !!f.json);
      if (f.once) return;
      await sleep(Math.max(0, started + intervalMs - Date.now()), stop.signal);
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** The config file's fields under the flags (a flag wins); then what a cycle cannot do without. */
async function withConfig(f: SyncFlags): Promise<SyncFlags & { receiver: string; fingerprint: string }> {
  const { config: c, path } = await loadAgentConfig(f.config);
  const m: SyncFlags = {
    ...f,
    device: f.device.length ? f.device : c.devices ?? [],
    receiver: f.receiver ?? c.receiver, fingerprint: f.fingerprint ?? c.fingerprint,
    codeFile: f.codeFile ?? c.codeFile, stateDir: f.stateDir ?? c.stateDir, sourceId: f.sourceId ?? c.sourceId,
    dataPort: f.dataPort ?? (c.dataPort !== undefined ? String(c.dataPort) : undefined),
    proxy: f.proxy ?? (c.proxy ? proxyUrl(c.proxy) : undefined), proxyPasswordFile: f.proxyPasswordFile ?? c.proxy?.passwordFile,
  };
  if (!m.receiver) throw new UserError('BAD_ARGS', 'no receiver given', `pass --receiver HOST[:PORT], or set "receiver" in ${path}`);
  if (!m.fingerprint) throw new UserError('BAD_ARGS', 'no receiver fingerprint given', `pass --fingerprint FP (from \`vmlift receiver info\`), or set "fingerprint" in ${path}`);
  return m as SyncFlags & { receiver: string; fingerprint: string };
}


function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) { reject(signal.reason); return; }
    const t = setTimeout(() => { signal.removeEventListener('abort', onAbort); resolve(); }, ms);
    const onAbort = (): void => { clearTimeout(t); reject(signal.reason); };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

function printReport(r: CycleReport, json: boolean): void {
  if (json) {
    process.stdout.write(`${JSON.stringify({ type: 'cycle', ...r })}\n`);
    return;
  }
  const rows = r.disks.map((d) => [d.disk, d.label, formatBytes(d.capacity), formatBytes(d.readBytes), formatBytes(d.changedBytes), formatBytes(d.sentBytes), d.sha256 ?? '']);
  process.stdout.write(`image ${r.imageId} committed (cycle ${r.cycleId}${r.baseImageId ? `, on image ${r.baseImageId}` : ', full'}${r.resumedFromState || r.attempts > 1 ? ', resumed' : ''}) in ${formatDuration(r.durationMs / 1000)}\n`
    + `${table(['disk', 'device', 'size', 'read', 'changed', 'sent', 'sha256'], rows)}\n`
    + `payload ${formatBytes(r.payloadBytes)}, on the wire ${formatBytes(r.wireBytes)}, ${r.extents} extents${r.resentBytes ? `, ${formatBytes(r.resentBytes)} re-sent after reconnects` : ''}\n`);
}
