import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { CodedError, UserError, isUserError, errorMessage, errorReport } from '../util/errors.ts';
import { StateError, type JobSettings } from '../state/types.ts';
import { parseSettings, resolveSettings, type SettingsInput } from './settings.ts';
import type { JobEngine } from './jobs.ts';
import type { Workgroups, BatchAction } from './workgroups.ts';
import type { EngineMetrics } from './metrics.ts';
import type { JobDrills } from './drills.ts';
import { apiListenHost, tokenMatches } from './api-access.ts';
import { FinalSyncConvergence } from './converge.ts';
import { forecastFinalSync } from './final-sync-forecast.ts';

export interface ApiOptions {
  engine: JobEngine;
  workgroups: Workgroups;
  metrics: EngineMetrics;
  logger: Logger;
  /** Bearer token the CLI presents (read from the connector's home, mode 0600). */
  token: string;
  /** Resolve a VM name or moref to its moref (through vCenter). */
  resolveVm(nameOrRef: string): Promise<{ vmRef: string; name: string }>;
  /** The receiver's images of a source (for `job show`), when reachable. */
  images?(sourceId: string): Promise<unknown[]>;
  /** Drills on the receiver (job drill, workgroup drill); absent: refused. */
  drills?: JobDrills;
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
  private readonly routes: [string, RegExp, Handler][] = [];

  constructor(private readonly o: ApiOptions) {
    const { engine, workgroups } = o;
    const st = engine.state;
    const converge = o.converge ?? new FinalSyncConvergence(engine, { logger: o.logger });
    this.route('GET', /^\/v1\/jobs$/, () => st.listJobs().map((j) => ({ ...engine.getJob(j.id), running: engine.isRunning(j.id) })));
    this.route('POST', /^\/v1\/jobs$/, async (_r, _p, b) => {
      const vm = await o.resolveVm(String(b.vm ?? ''));
      const template = b.template ? this.template(String(b.template)) : undefined;
      const settings = resolveSettings(template, parseSettings((b.settings ?? {}) as SettingsInput));
      return engine.createJob({ id: String(b.id ?? ''), name: vm.name, vmRef: vm.vmRef, settings });
    });
    this.route('GET', /^\/v1\/jobs\/([^/]+)$/, async (_r, [id]) => {
      const job = engine.getJob(id!);
      return {
        job, disks: st.getDisks(id!), cycles: st.listCycles(id!, 10), live: engine.live(id!) ?? null, drills: st.listDrills(id!, 5),
        finalSync: forecastFinalSync(st.listCycles(id!, 20), job.settings), converge: converge.status(id!) ?? null,
        images: o.images ? await o.images(job.sourceId).catch((e) => ({ error: errorMessage(e) })) : [],
      };
    });
    this.route('POST', /^\/v1\/jobs\/([^/]+)\/(start|sync|pause|resume|complete)$/, (_r, [id, action]) => {
      switch (action) {
        case 'start': return engine.start(id!);
        case 'sync': return engine.requestSync(id!);
        case 'pause': return engine.pause(id!);
        case 'resume': return engine.resume(id!);
        default: return engine.complete(id!);
      }
    });
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

    this.route('GET', /^\/v1\/workgroups$/, () => workgroups.list());
    this.route('POST', /^\/v1\/workgroups$/, (_r, _p, b) => workgroups.create(String(b.id ?? ''), b.name ? String(b.name) : undefined));
    this.route('GET', /^\/v1\/workgroups\/([^/]+)$/, (_r, [id]) => workgroups.status(id!));
    this.route('POST', /^\/v1\/workgroups\/([^/]+)\/(add|remove)$/, (_r, [id, op], b) => {
      const jobs = (b.jobs as string[] | undefined) ?? [];
      return op === 'add' ? workgroups.add(id!, jobs) : workgroups.remove(id!, jobs);
    });
    this.route('POST', /^\/v1\/workgroups\/([^/]+)\/converge$/, (_r, [id], b) => converge.startMany(workgroups.get(id!).members, { maxFinalSyncSeconds: Number(b.maxFinalSyncSeconds) }));
    this.route('GET', /^\/v1\/workgroups\/([^/]+)\/converge$/, (_r, [id]) => workgroups.get(id!).members.map((m) => converge.status(m) ?? null));
    this.route('POST', /^\/v1\/workgroups\/([^/]+)\/drill$/, (_r, [id]) => workgroups.drill(id!, this.drills()));
    this.route('POST', /^\/v1\/workgroups\/([^/]+)\/([a-z]+)$/, (_r, [id, action]) => {
      if (!BATCH_ACTIONS.has(action!)) throw new UserError('BAD_ACTION', `unknown workgroup action ${action}`, `use one of ${[...BATCH_ACTIONS].join(', ')}`);
      return workgroups.batch(id!, action as BatchAction);
    });

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

  async close(): Promise<void> {
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
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
    const send = (status: number, body: unknown, type = 'application/json') => {
      res.writeHead(status, { 'content-type': type });
      res.end(type === 'application/json' ? JSON.stringify(body) : String(body));
    };
    try {
      if (req.method === 'GET' && path === '/metrics') {
        send(200, await this.o.metrics.registry.metrics(), this.o.metrics.registry.contentType);
        return;
      }
      if (!this.authorized(req)) {
        this.o.logger.warn({ path, remote: req.socket.remoteAddress }, 'connector API: refused request without a valid token');
        send(401, { error: { code: 'UNAUTHORIZED', message: 'missing or wrong connector API token', fix: 'run the CLI with the same --home as the connector' } });
        return;
      }
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

  private authorized(req: IncomingMessage): boolean {
    return tokenMatches(req.headers.authorization, this.o.token);
  }
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > 1 << 20) throw new UserError('BODY_TOO_LARGE', 'request body larger than 1 MiB');
    chunks.push(c as Buffer);
  }
  if (!size) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new UserError('BAD_JSON', 'request body is not valid JSON');
  }
}
