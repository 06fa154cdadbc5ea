import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { hostname } from 'node:os';
import type { AddressInfo } from 'node:net';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { CodedError, UserError, isUserError, errorMessage, errorReport } from '../util/errors.ts';
import { StateError, type JobSettings } from '../state/types.ts';
import { parseSettings, resolveSettings, type SettingsInput } from './settings.ts';
import type { JobEngine } from './jobs.ts';
import { hasCommittedImage, type Workgroups, type BatchAction, type Preflight } from './workgroups.ts';
import { diskSelection, selectDisks } from './names.ts';
import { createWorkgroup } from './workgroup-create.ts';
import type { EngineMetrics } from './metrics.ts';
import type { JobDrills } from './drills.ts';
import { apiListenHost } from './api-access.ts';
import { createAgentJob, registerAgentRoutes, type AgentApi } from './agent-api.ts';
import { previewBatch, type PreviewAction } from './batch-preview.ts';
import { ConsoleAuth, ownOrigin } from '../console/session-auth.ts';
import { handleLogin, handleSession } from '../console/session-routes.ts';
import { StaticAssets } from '../console/static-assets.ts';
import { LiveEvents } from './live-events.ts';
import { FinalSyncConvergence } from './converge.ts';
import { forecastFinalSync } from './final-sync-forecast.ts';
import { readJsonBody } from '../util/read-json-body.ts';
import { SERVER_TLS } from '../transfer/tls-suites.ts';
import type { ReceiverFiguresResponse } from './receiver-figures.ts';

export interface ApiOptions {
  engine: JobEngine;
  workgroups: Workgroups;
  metrics: EngineMetrics;
  logger: Logger;
  /** Bearer token the CLI presents (read from the connector's home, mode 0600). */
  token: string;
  /** Resolve a VM name or moref to its moref (through vCenter). */
  resolveVm(nameOrRef: string): Promise<{ vmRef: string; name: string; diskKeys?: number[] }>;
  /** The receiver's images of a source (for `job show`), when reachable. */
  images?(sourceId: string): Promise<unknown[]>;
  /** Drills on the receiver (job drill, workgroup drill); absent: refused. */
  drills?: JobDrills;
  /** vCenter's preflight of a VM (`workgroup start --dry-run`); absent: the dry run checks states only. */
  preflight?: Preflight;
  /** Agent sources (agent-api.ts); absent: agent jobs are refused. */
  agents?: AgentApi;
  /** vCenter's VMs with their preflight (GET /v1/inventory); absent: refused. */
  inventory?(): Promise<unknown[]>;
  /** The receivers the connector knows, asked for their space and dedup ratio (GET /v1/receivers; receiver-figures.ts); absent: none known. */
  receivers?(): Promise<ReceiverFiguresResponse>;
  /** `--max-final-sync` convergence (default: one over `engine`). */
  converge?: FinalSyncConvergence;
}

type Handler = (req: IncomingMessage, params: string[], body: Record<string, unknown>) => Promise<unknown> | unknown;

const BATCH_ACTIONS = new Set(['start', 'sync', 'pause', 'resume', 'complete']);

/**
 * The connector's local API (loopback only): the CLI's `job`, `workgroup` and `template`
 * commands talk to it; `/metrics` serves Prometheus text.
 */
export class ConnectorApi {
  private server: Server | undefined;
  private remote: Server | undefined;
  /** `https://host:port` of the TLS listener, for one-time links that work from another machine. */
  private remoteBase: string | undefined;
  private readonly routes: [string, RegExp, Handler][] = [];
  /** The web console (src/console): sessions beside the bearer token, its page, live events. */
  private readonly auth: ConsoleAuth;
  private readonly assets = new StaticAssets();
  private readonly events: LiveEvents;

  constructor(private readonly o: ApiOptions) {
    const { engine, workgroups } = o;
    this.auth = new ConsoleAuth(o.token);
    this.events = new LiveEvents(engine);
    const st = engine.state;
    const converge = o.converge ?? new FinalSyncConvergence(engine, { logger: o.logger });
    this.route('GET', /^\/v1\/jobs$/, () => st.listJobs().map((j) => ({ ...engine.getJob(j.id), running: engine.isRunning(j.id) })));
    this.route('POST', /^\/v1\/jobs$/, async (_r, _p, b) => {
      if (b.agent !== undefined) return createAgentJob(engine, o.agents, b, (n) => this.template(n));
      const template = b.template ? this.template(String(b.template)) : undefined;
      const settings = resolveSettings(template, parseSettings((b.settings ?? {}) as SettingsInput));
      const disks = diskSelection((b.disks ?? {}) as { include?: number[]; exclude?: number[] });
      const vm = await o.resolveVm(String(b.vm ?? ''));
      // A selection the VM's disks cannot meet is refused now, not at the first cycle (which checks again: disks change).
      if (disks && vm.diskKeys) selectDisks([...vm.diskKeys].sort((x, y) => x - y).map((key) => ({ key })), disks, vm.name);
      return engine.createJob({
        id: String(b.id ?? ''), name: b.name === undefined ? vm.name : String(b.name), description: b.description === undefined ? '' : String(b.description),
        disks, vmRef: vm.vmRef, settings, start: b.start !== false,
      });
    });
    this.route('GET', /^\/v1\/jobs\/([^/]+)$/, async (_r, [id]) => {
      const job = engine.getJob(id!);
      return {
        job, disks: st.getDisks(id!), cycles: st.listCycles(id!, 10), live: engine.live(id!) ?? null, drills: st.listDrills(id!, 5),
        finalSync: forecastFinalSync(st.listCycles(id!, 20), job.settings), converge: converge.status(id!) ?? null,
        images: job.kind === 'agent' ? o.agents?.sources.images(id!) ?? [] : o.images ? await o.images(job.sourceId).catch((e) => ({ error: errorMessage(e) })) : [],
      };
    });
    this.route('POST', /^\/v1\/jobs\/([^/]+)\/(start|sync|pause|resume|complete)$/, (_r, [id, action], b) => {
      switch (action) {
        case 'start': return engine.start(id!);
        case 'sync': return engine.requestSync(id!);
        case 'pause': return engine.pause(id!);
        case 'resume': return engine.resume(id!);
        default: return engine.complete(id!, { finalSync: b.finalSync !== false });
      }
    });
    this.route('PATCH', /^\/v1\/jobs\/([^/]+)$/, (_r, [id], b) => engine.edit(id!, {
      ...(b.name !== undefined ? { name: String(b.name) } : {}), ...(b.description !== undefined ? { description: String(b.description) } : {}),
    }));
    this.route('POST', /^\/v1\/jobs\/([^/]+)\/converge$/, (_r, [id], b) => converge.start(id!, { maxFinalSyncSeconds: Number(b.maxFinalSyncSeconds) }));
    this.route('GET', /^\/v1\/jobs\/([^/]+)\/converge$/, (_r, [id]) => {
      engine.getJob(id!);
      const s = converge.status(id!);
      if (!s) throw new UserError('NO_CONVERGE', `job ${id} is not converging`, `start it with \`vmlift job complete ${id} --max-final-sync 5m\``);
      return s;
    });
    this.route('POST', /^\/v1\/jobs\/([^/]+)\/drill$/, (_r, [id], b) => {
      engine.getJob(id!);
      return this.drills().start(id!, b.imageId === undefined ? undefined : String(b.imageId));
    });
    this.route('PATCH', /^\/v1\/jobs\/([^/]+)\/settings$/, (_r, [id], b) => engine.updateSettings(id!, parseSettings(b as SettingsInput)));
    this.route('DELETE', /^\/v1\/jobs\/([^/]+)$/, async (r, [id]) => {
      await engine.delete(id!, { removeImages: new URL(r.url ?? '/', 'http://x').searchParams.get('removeImages') === '1' });
      return { deleted: id };
    });

    this.route('GET', /^\/v1\/workgroups$/, () => workgroups.summaries());
    this.route('POST', /^\/v1\/workgroups$/, (_r, _p, b) => createWorkgroup(this.o, (n) => this.template(n), b));
    this.route('GET', /^\/v1\/workgroups\/([^/]+)$/, (_r, [id]) => workgroups.status(id!));
    this.route('PATCH', /^\/v1\/workgroups\/([^/]+)$/, (_r, [id], b) => workgroups.edit(id!, {
      ...(b.name !== undefined ? { name: String(b.name) } : {}), ...(b.description !== undefined ? { description: String(b.description) } : {}),
    }));
    this.route('DELETE', /^\/v1\/workgroups\/([^/]+)$/, (r, [id]) =>
      workgroups.delete(id!, { detach: new URL(r.url ?? '/', 'http://x').searchParams.get('detach') === '1' }));
    this.route('PATCH', /^\/v1\/workgroups\/([^/]+)\/settings$/, (_r, [id], b) => workgroups.set(id!, parseSettings(b as SettingsInput)));
    this.route('POST', /^\/v1\/workgroups\/([^/]+)\/start-dry-run$/, (_r, [id]) => workgroups.startDryRun(id!, o.preflight));
    this.route('POST', /^\/v1\/workgroups\/([^/]+)\/(add|remove)$/, (_r, [id, op], b) => {
      const jobs = (b.jobs as string[] | undefined) ?? [];
      return op === 'add' ? workgroups.add(id!, jobs) : workgroups.remove(id!, jobs);
    });
    this.route('POST', /^\/v1\/workgroups\/([^/]+)\/preview$/, (_r, [id], b) => {
      // A start is previewed by its dry run, which also asks vCenter's preflight of first cycles.
      if (b.action === 'start') return workgroups.startDryRun(id!, o.preflight);
      const members = workgroups.get(id!).members.map((j) => engine.getJob(j));
      return previewBatch(members, String(b.action ?? '') as PreviewAction, (j) => hasCommittedImage(st, j));
    });
    this.route('GET', /^\/v1\/inventory$/, () => {
      if (!this.o.inventory) throw new UserError('INVENTORY_UNAVAILABLE', 'this connector has no vCenter inventory', 'start it with `vmlift connector serve`');
      return this.o.inventory();
    });
    this.route('POST', /^\/v1\/workgroups\/([^/]+)\/converge$/, (_r, [id], b) => converge.startMany(workgroups.get(id!).members, { maxFinalSyncSeconds: Number(b.maxFinalSyncSeconds) }));
    this.route('GET', /^\/v1\/workgroups\/([^/]+)\/converge$/, (_r, [id]) => workgroups.get(id!).members.map((m) => converge.status(m) ?? null));
    this.route('POST', /^\/v1\/workgroups\/([^/]+)\/drill$/, (_r, [id]) => workgroups.drill(id!, this.drills()));
    this.route('POST', /^\/v1\/workgroups\/([^/]+)\/([a-z]+)$/, (_r, [id, action]) => {
      if (!BATCH_ACTIONS.has(action!)) throw new UserError('BAD_ACTION', `unknown workgroup action ${action}`, `use one of ${[...BATCH_ACTIONS].join(', ')}`);
      return workgroups.batch(id!, action as BatchAction);
    });

    if (o.agents) registerAgentRoutes((m, re, h) => this.route(m, re, h as Handler), engine, o.agents);

    this.route('GET', /^\/v1\/receivers$/, () => (o.receivers ? o.receivers() : { receivers: [] } satisfies ReceiverFiguresResponse));

    this.route('GET', /^\/v1\/templates$/, () => st.listTemplates());
    this.route('PUT', /^\/v1\/templates\/([^/]+)$/, (_r, [name], b) => st.putTemplate(name!, parseSettings(b as SettingsInput)));
    this.route('GET', /^\/v1\/templates\/([^/]+)$/, (_r, [name]) => this.template(name!, true));
    this.route('DELETE', /^\/v1\/templates\/([^/]+)$/, (_r, [name]) => { this.template(name!); st.deleteTemplate(name!); return { deleted: name }; });
  }

  /** Loopback only (`apiListenHost`): another address is refused with API_NOT_LOOPBACK. */
  async listen(port: number, listenHost?: string): Promise<AddressInfo> {
    const host = apiListenHost(listenHost);
    this.server = createServer((req, res) => { void this.handle(req, res); });
    await new Promise<void>((resolve, reject) => { this.server!.once('error', reject); this.server!.listen(port, host, resolve); });
    return this.server.address() as AddressInfo;
  }

  /**
   * The API and the console for other machines (`connector serve --listen`): TLS only, with the
   * connector's own certificate (the one agents pin), on any address. Same routes, same auth.
   */
  async listenTls(port: number, host: string, tls: { key: string; cert: string }): Promise<AddressInfo> {
    this.remote = createTlsServer({ key: tls.key, cert: tls.cert, ...SERVER_TLS }, (req, res) => { void this.handle(req, res); });
    await new Promise<void>((resolve, reject) => { this.remote!.once('error', reject); this.remote!.listen(port, host, resolve); });
    const a = this.remote.address() as AddressInfo;
    // A link for another machine names this host when the listener is on every address.
    const named = host === '0.0.0.0' || host === '::' ? hostname() : host;
    this.remoteBase = `https://${named.includes(':') ? `[${named}]` : named}:${a.port}`;
    return a;
  }

  async close(): Promise<void> {
    this.events.close();
    await Promise.all([this.server, this.remote].map((srv) => new Promise<void>((resolve) => (srv ? srv.close(() => resolve()) : resolve()))));
  }

  private drills(): JobDrills {
    if (!this.o.drills) throw new UserError('DRILLS_UNAVAILABLE', 'this connector runs no drills', 'start it with `vmlift connector serve`, which wires them to the receiver');
    return this.o.drills;
  }

  private template(name: string, full = false): Partial<JobSettings> & object {
    const t = this.o.engine.state.getTemplate(name);
    if (!t) throw new UserError('NO_TEMPLATE', `no template named ${name}`, 'list templates with `vmlift template ls`');
    return full ? t : t.settings;
  }

  private route(method: string, re: RegExp, h: Handler): void { this.routes.push([method, re, h]); }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const send = (status: number, body: unknown, type = 'application/json', headers: Record<string, string> = {}) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', ...headers });
      res.end(type === 'application/json' ? JSON.stringify(body) : Buffer.isBuffer(body) ? body : String(body));
    };
    try {
      if (req.method === 'GET' && path === '/metrics') {
        send(200, await this.o.metrics.registry.metrics(), this.o.metrics.registry.contentType);
        return;
      }
      if (await this.assets.serve(req, res, path)) return;
      if (req.method === 'POST' && path === '/v1/session') {
        handleLogin(this.auth, req, await readJson(req), (st, b, h) => send(st, b, undefined, h));
        return;
      }
      const who = this.auth.authorize(req);
      if (!who.ok) {
        this.o.logger.warn({ path, remote: req.socket.remoteAddress, errCode: who.code }, 'connector API: refused request without a valid token or session');
        send(who.status, { error: { code: who.code, message: who.message, fix: who.fix } });
        return;
      }
      if (handleSession(this.auth, who, req, path, (st, b, h) => send(st, b, undefined, h), ownOrigin(req), this.remoteBase)) return;
      if (req.method === 'GET' && path === '/v1/events') { this.events.open(req, res); return; }
      const shot = req.method === 'GET' ? /^\/v1\/jobs\/([^/]+)\/drills\/([^/]+)\/screenshot$/.exec(path) : null;
      if (shot) { send(200, await drillScreenshot(this.o.engine, decodeURIComponent(shot[1]!), decodeURIComponent(shot[2]!)), 'image/png'); return; }
      for (const [method, re, h] of this.routes) {
        const m = re.exec(path);
        if (!m || method !== req.method) continue;
        const body = await readJson(req);
        send(200, await h(req, m.slice(1).map(decodeURIComponent), body));
        return;
      }
      send(404, { error: { code: 'NOT_FOUND', message: `no such API route: ${req.method} ${path}` } });
    } catch (e) {
      if (isUserError(e)) send(e.code.startsWith('NO_') ? 404 : 409, { error: errorReport(e) });
      else if (e instanceof StateError) send(409, { error: errorReport(e) });
      else {
        this.o.logger.error({ path, err: errorMessage(e) }, 'connector API error');
        send(500, { error: e instanceof CodedError ? errorReport(e) : { code: 'INTERNAL', message: errorMessage(e) } });
      }
    }
  }

}

/** A drill's console screenshot, as the connector kept it with the drill's report. */
async function drillScreenshot(engine: JobEngine, jobId: string, drillId: string): Promise<Buffer> {
  const d = engine.state.listDrills(jobId, 1000).find((x) => x.id === drillId);
  if (!d) throw new UserError('NO_DRILL', `job ${jobId} has no drill ${drillId}`, 'see the job\'s drills with `vmlift job show`');
  try {
    return await readFile(join(d.reportDir ?? '', 'console.png'));
  } catch {
    throw new UserError('NO_SCREENSHOT', `drill ${drillId} kept no console screenshot`, 'wait for the drill\'s boot test (`vmlift job show`); a boot test whose QEMU exited, or whose screendump failed, keeps none: read its report instead');
  }
}

const readJson = (req: IncomingMessage): Promise<Record<string, unknown>> => readJsonBody(req, 1 << 20);
