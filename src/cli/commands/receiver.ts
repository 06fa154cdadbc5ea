import type { Command } from 'commander';
import { resolve } from 'node:path';
import { createLogger } from '../../util/log.ts';
import { UserError } from '../../util/errors.ts';
import { printResult, table } from '../output.ts';
import { formatFingerprint } from '../../transfer/connect.ts';
import { startReceiver, initDataDir } from '../../receiver/server.ts';
import { targetDrillSteps } from '../drill-steps.ts';
import { createCode, listCodes, rotateTls, CODE_LIMITS, type ActivationCode } from '../../receiver/identity.ts';

function intOption(v: string, what: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n)) throw new UserError('BAD_OPTION', `${what} "${v}" is not a whole number`, `give ${what} as a whole number`);
  return n;
}
function portOption(v: string, what: string): number {
  const n = intOption(v, what);
  if (n > 65535) throw new UserError('BAD_OPTION', `${what} ${n} is outside 0..65535`, `choose a port in 1..65535 (0 = any free port)`);
  return n;
}

function codeView(c: ActivationCode) {
  const expired = Date.parse(c.expiresAt) <= Date.now();
  return { code: c.code, quota: c.quota, used: c.used, expiresAt: c.expiresAt, state: expired ? 'expired' : c.used >= c.quota ? 'used up' : 'valid' };
}

export function register(program: Command): void {
  const r = program.command('receiver').description('the intermediate instance: receives disk data and keeps images');

  r.command('serve')
    .description('run the receiver (control API over TLS, data port over TLS); first start creates the TLS key and an activation code')
    .requiredOption('--data-dir <dir>', 'where the receiver keeps its key, codes, sources and image store')
    .option('--listen <host>', 'address to listen on (default: all)')
    .option('--control-port <port>', 'control API port (0 = any free port)', '8080')
    .option('--data-port <port>', 'data port (0 = any free port)', '8703')
    .option('--drill-concurrency <n>', 'drills (inspect, convert, boot-test) run at once; each boot holds its guest\'s memory', '1')
    .option('--drill-timeout <seconds>', 'boot-test timeout of a drill', '600')
    .option('--drill-memory <MiB>', 'memory of a drill\'s libguestfs appliances (inspect, virt-v2v) and at most of its boot (default: libguestfs\' 1280/2560 MiB and the VM\'s memory)')
    .option('--drill-deadline <minutes>', 'a drill running longer is stopped (DRILL_TIMEOUT)', '240')
    .option('--json', 'print the start-up facts as one JSON line')
    .action(async (o: { dataDir: string; listen?: string; controlPort: string; dataPort: string; drillConcurrency: string; drillTimeout: string; drillMemory?: string; drillDeadline: string; json?: boolean }) => {
      const log = createLogger({}, { cmd: 'receiver serve' });
      const concurrency = Number(o.drillConcurrency);
      const bootTimeoutSeconds = Number(o.drillTimeout);
      if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 16) throw new UserError('BAD_OPTION', `--drill-concurrency must be 1-16, got ${o.drillConcurrency}`, 'pass e.g. --drill-concurrency 1');
      if (!Number.isInteger(bootTimeoutSeconds) || bootTimeoutSeconds < 30 || bootTimeoutSeconds > 7200) throw new UserError('BAD_OPTION', `--drill-timeout must be 30-7200 seconds, got ${o.drillTimeout}`, 'pass e.g. --drill-timeout 600');
      const memoryMiB = o.drillMemory === undefined ? undefined : Number(o.drillMemory);
      if (memoryMiB !== undefined && (!Number.isInteger(memoryMiB) || memoryMiB < 1024 || memoryMiB > 262144)) throw new UserError('BAD_OPTION', `--drill-memory must be 1024-262144 MiB, got ${o.drillMemory}`, 'pass e.g. --drill-memory 2048 (virt-v2v runs apt and update-initramfs inside its appliance)');
      const deadlineMinutes = Number(o.drillDeadline);
      if (!Number.isInteger(deadlineMinutes) || deadlineMinutes < 5 || deadlineMinutes > 7 * 24 * 60) throw new UserError('BAD_OPTION', `--drill-deadline must be 5-10080 minutes, got ${o.drillDeadline}`, 'pass e.g. --drill-deadline 240');
      const rx = await startReceiver({
        dataDir: resolve(o.dataDir), controlPort: portOption(o.controlPort, '--control-port'), dataPort: portOption(o.dataPort, '--data-port'),
        ...(o.listen ? { listen: o.listen } : {}), logger: log,
        drills: { steps: targetDrillSteps({ memoryMiB }), concurrency, bootTimeoutSeconds, deadlineSeconds: deadlineMinutes * 60 },
      });
      const facts = {
        controlPort: rx.controlPort, dataPort: rx.dataPort, fingerprint: formatFingerprint(rx.fingerprint),
        activationCode: rx.createdCode ? codeView(rx.createdCode) : null,
      };
      if (o.json) process.stdout.write(`${JSON.stringify(facts)}\n`);
      else {
        process.stdout.write(`vmlift receiver listening: control port ${facts.controlPort}, data port ${facts.dataPort}\n`
          + `certificate fingerprint (SHA-256): ${facts.fingerprint}\n`
          + (rx.createdCode ? `activation code: ${rx.createdCode.code} (${rx.createdCode.quota} sources, valid until ${rx.createdCode.expiresAt})\n` : '')
          + 'show again with: vmlift receiver info --data-dir DIR\n');
      }
      await new Promise<void>((done) => {
        // Listeners stay on while closing: a drill step's own signal handler (target/abort.ts) then kills
        // its children without ending the process, and the drill ends DRILL_INTERRUPTED with its report.
        let stopping = false;
        const stop = (sig: NodeJS.Signals) => {
          // A second signal ends at once (the steps' exit handlers still kill their children).
          if (stopping) process.exit(128 + (sig === 'SIGINT' ? 2 : 15));
          stopping = true;
          log.info({ signal: sig }, 'receiver stopping');
          rx.close().finally(done);
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
    });

  r.command('info')
    .description('print the certificate fingerprint and the activation codes')
    .requiredOption('--data-dir <dir>', 'the receiver data directory')
    .option('--json', 'JSON output')
    .action(async (o: { dataDir: string; json?: boolean }) => {
      const init = await initDataDir(resolve(o.dataDir), true);
      const codes = (await listCodes(resolve(o.dataDir))).map(codeView);
      printResult(o.json, { fingerprint: formatFingerprint(init.fingerprint), codes }, (v) =>
        `certificate fingerprint (SHA-256): ${v.fingerprint}\n\n`
        + table(['CODE', 'USED', 'QUOTA', 'EXPIRES', 'STATE'], v.codes.map((c) => [c.code, c.used, c.quota, c.expiresAt, c.state])));
    });

  r.command('code')
    .description('make another activation code')
    .requiredOption('--data-dir <dir>', 'the receiver data directory')
    .option('--quota <n>', `sources it may register (${CODE_LIMITS.quota.min}-${CODE_LIMITS.quota.max})`, String(CODE_LIMITS.quota.default))
    .option('--days <d>', `validity in days (${CODE_LIMITS.days.min}-${CODE_LIMITS.days.max})`, String(CODE_LIMITS.days.default))
    .option('--json', 'JSON output')
    .action(async (o: { dataDir: string; quota: string; days: string; json?: boolean }) => {
      const quota = intOption(o.quota, '--quota');
      const days = intOption(o.days, '--days');
      await initDataDir(resolve(o.dataDir), true);
      const c = await createCode(resolve(o.dataDir), quota, days);
      printResult(o.json, codeView(c), (v) => `activation code: ${v.code} (${v.quota} sources, valid until ${v.expiresAt})`);
    });

  r.command('rotate-cert')
    .description('make a new TLS key and certificate; the running receiver uses them once restarted, and every sender must accept the new fingerprint')
    .requiredOption('--data-dir <dir>', 'the receiver data directory')
    .option('--json', 'JSON output')
    .action(async (o: { dataDir: string; json?: boolean }) => {
      // not initDataDir: it refuses a key that does not match its certificate, which a rotation repairs
      const r = await rotateTls(resolve(o.dataDir));
      const v = { previousFingerprint: formatFingerprint(r.oldFingerprint), fingerprint: formatFingerprint(r.fingerprint), retiredCert: r.retiredCert };
      printResult(o.json, v, () => `new certificate fingerprint (SHA-256): ${v.fingerprint}\n(was ${v.previousFingerprint}; the old certificate is kept as ${v.retiredCert}, its key is gone)\n`
        + 'restart `vmlift receiver serve` to use it; then accept it on every sender:\n'
        + `  connector: vmlift connector set --home HOME --fingerprint ${v.fingerprint}  (then restart the connector)\n`
        + `  agent:     vmlift agent sync ... --fingerprint ${v.fingerprint}`);
    });
}
