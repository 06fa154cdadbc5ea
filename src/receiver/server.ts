import https from 'node:https';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { access, mkdir } from 'node:fs/promises';
import type { Logger } from '../util/log.ts';
import { silentLogger } from '../util/log.ts';
import { errorMessage, UserError } from '../util/errors.ts';
import type { ImageStore } from '../store/types.ts';
import { openImageStore } from '../store/index.ts';
import { sharedCodecPool } from '../transfer/codec-pool.ts';
import { formatFingerprint } from '../transfer/connect.ts';
import { SERVER_TLS } from '../transfer/tls-suites.ts';
import { createCode, listCodes, loadOrCreateTls, type ActivationCode } from './identity.ts';
import { OpenCycles } from './open-cycles.ts';
import { controlHandler } from './control.ts';
import { DataConnection, PendingBudget } from './data.ts';
import { DrillRunner, type DrillRunnerOptions, type DrillSteps } from './drills.ts';

/**
 * How long a peer may take: to finish the TLS handshake (both ports; Node's default is 120 s), to send
 * a control request's headers (a client dripping them a byte at a time is cut off; Node's default is
 * 60 s, checked every 30 s) and a whole request (Node's default, 300 s: a commit body may be large).
 * docs/reliability.md, "Fuzzing the receiver".
 */
export const HANDSHAKE_TIMEOUT_MS = 15_000;
const CONTROL_TIMEOUTS = { handshakeTimeout: HANDSHAKE_TIMEOUT_MS, headersTimeout: 20_000, requestTimeout: 300_000, connectionsCheckingInterval: 5_000 };

export interface ReceiverOptions {
  dataDir: string;
  listen?: string;
  /** 0 = any free port. */
  controlPort?: number;
  dataPort?: number;
  logger?: Logger;
  /** Inspect, convert and boot-test steps for drills (cli/ wires target/); without them drill requests are refused. */
  drills?: { steps: DrillSteps } & DrillRunnerOptions;
}

export interface RunningReceiver {
  controlPort: number;
  dataPort: number;
  /** 64 lowercase hex chars. */
  fingerprint: string;
  /** The activation code made on first start (null on later starts). */
  createdCode: ActivationCode | null;
  store: ImageStore;
  close(): Promise<void>;
}

/**
 * First-start set-up (TLS identity, first activation code) for `serve`; `info` and `code` pass
 * `mustExist` so a mistyped directory is an error instead of a second receiver identity.
 */
export async function initDataDir(dataDir: string, mustExist = false): Promise<{ fingerprint: string; createdCode: ActivationCode | null; key: string; cert: string }> {
  if (mustExist) {
    try { await access(join(dataDir, 'tls', 'cert.pem')); } catch {
      throw new UserError('NO_RECEIVER', `${dataDir} holds no receiver (no tls/cert.pem)`,
        'check --data-dir, or start the receiver once with `vmlift receiver serve --data-dir DIR`');
    }
  }
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const { tls: id, created } = await loadOrCreateTls(dataDir);
  let createdCode: ActivationCode | null = null;
  if (created || (await listCodes(dataDir)).length === 0) createdCode = await createCode(dataDir);
  return { fingerprint: id.fingerprint, createdCode, key: id.key, cert: id.cert };
}

function listenOn(server: tls.Server, port: number, host: string | undefined, what: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new UserError('LISTEN', `cannot listen on ${host ?? '*'}:${port} for the ${what}: ${e.message}`,
      e.code === 'EADDRINUSE' ? `another process uses port ${port}; stop it or choose another --${what === 'control API' ? 'control' : 'data'}-port` : 'check --listen and the port')));
    server.listen(port, host, () => resolve((server.address() as AddressInfo).port));
  });
}

export async function startReceiver(o: ReceiverOptions): Promise<RunningReceiver> {
  const log = (o.logger ?? silentLogger).child({ component: 'receiver' });
  const init = await initDataDir(o.dataDir);
  const store = await openImageStore(join(o.dataDir, 'store'), {
    onBackgroundError: (e) => log.warn({ err: errorMessage(e) }, 'sweep of owed garbage failed; the next commit retries it'),
  });
  const cycles = new OpenCycles(store, log);
  const drills = o.drills ? new DrillRunner(store, join(o.dataDir, 'drills'), o.drills.steps, log.child({ component: 'drills' }), o.drills) : undefined;
  const interrupted = await drills?.recover();
  if (interrupted) log.warn({ drills: interrupted }, 'drills interrupted by the last stop are marked abnormal');
  const pool = sharedCodecPool();
  let dataPort = 0;
  const control = https.createServer({ key: init.key, cert: init.cert, ...SERVER_TLS, ...CONTROL_TIMEOUTS },
    controlHandler({ dataDir: o.dataDir, store, cycles, log, dataPort: () => dataPort, drills }));
  control.keepAliveTimeout = 5000;
  const conns = new Set<DataConnection>();
  const budget = new PendingBudget();
  const data = tls.createServer({ key: init.key, cert: init.cert, ...SERVER_TLS, handshakeTimeout: HANDSHAKE_TIMEOUT_MS }, (s) => {
    s.setNoDelay(true);
    const c = new DataConnection(s, { dataDir: o.dataDir, cycles, pool, log, budget });
    conns.add(c);
    s.on('close', () => conns.delete(c));
  });
  // With a listener Node leaves the failed socket open: each handshake that never came held its socket for good.
  data.on('tlsClientError', (e, s) => { log.debug({ err: e.message }, 'TLS handshake failed on the data port'); s.destroy(); });
  control.on('tlsClientError', (e, s) => { log.debug({ err: e.message }, 'TLS handshake failed on the control port'); s.destroy(); });
  const controlPort = await listenOn(control, o.controlPort ?? 8080, o.listen, 'control API');
  dataPort = await listenOn(data, o.dataPort ?? 8703, o.listen, 'data port');
  log.info({ controlPort, dataPort, fingerprint: formatFingerprint(init.fingerprint) }, 'receiver listening');
  return {
    controlPort, dataPort, fingerprint: init.fingerprint, createdCode: init.createdCode, store,
    async close() {
      control.close();
      data.close();
      control.closeAllConnections();
      await Promise.all([...conns].map((c) => c.detach()));
      await drills?.close();
      await store.close();
    },
  };
}
