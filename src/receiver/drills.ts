/**
 * Migration drills on the intermediate instance: inspect, convert and boot-test one image of a
 * source while its job keeps syncing. The image is pinned for the whole drill, so retention skips
 * it; drills run one at a time by default (a boot holds the guest's memory); each leaves a report
 * (`report.json`, and `console.png` when the boot got that far) in `<data-dir>/drills/<source>/<drill>/`.
 * The steps themselves come from target/ through `DrillSteps`, wired by cli/.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile, copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../util/log.ts';
import { CodedError, UserError, errorMessage, errorReport } from '../util/errors.ts';
import { assertId, isValidId } from '../util/ids.ts';
import { Semaphore } from '../util/semaphore.ts';
import type { ImageStore } from '../store/types.ts';
import type { DrillReport, DrillStepName, DrillStepReport } from '../transfer/contract.ts';

export interface DrillInspection {
  /** The verdict for KVM: ready, needs conversion or blocked. */
  verdict: 'ready' | 'needs conversion' | 'blocked';
  message: string;
  code?: string;
  fix?: string;
}
export interface DrillBoot {
  passed: boolean;
  accel: string | null;
  secondsToLogin: number | null;
  consoleTail: string[];
  /** A PNG of the VGA console, when one was taken. */
  screenshot: string | null;
  message: string;
  code?: string;
  fix?: string;
}
/**
 * `signal` aborts when the drill is cancelled (the receiver stops, or the drill outlives its deadline):
 * a step then ends its child processes (appliance, virt-v2v, QEMU) at once, removes its temporary
 * files and rejects with the signal's reason.
 */
export interface DrillStepContext { signal: AbortSignal; log: Logger }

/** What a drill runs, in order. Each step reads the image through the store's exports only. */
export interface DrillSteps {
  inspect(store: ImageStore, sourceId: string, imageId: string, ctx: DrillStepContext): Promise<DrillInspection>;
  /** Convert into `outputDir` (which does not exist yet). */
  convert(store: ImageStore, sourceId: string, imageId: string, outputDir: string, ctx: DrillStepContext): Promise<{ message: string }>;
  boot(store: ImageStore, sourceId: string, imageId: string, o: { converted: string | null; reportDir: string; timeoutSeconds: number } & DrillStepContext): Promise<DrillBoot>;
}

export interface DrillRunnerOptions {
  /** Drills at a time (default 1). */
  concurrency?: number;
  /** Boot-test timeout in seconds (default 600). */
  bootTimeoutSeconds?: number;
  /** The whole drill's deadline in seconds, from its start (not its queueing); past it the drill is cancelled, DRILL_TIMEOUT (default 4 h). */
  deadlineSeconds?: number;
}

export const DEFAULT_DRILL_DEADLINE_SECONDS = 4 * 3600;

const REPORT = 'report.json';
const SCREENSHOT = 'console.png';

export class DrillRunner {
  private readonly slots: Semaphore;
  private readonly running = new Map<string, AbortController>();
  private readonly done = new Set<Promise<void>>();
  private closed = false;

  constructor(private readonly store: ImageStore, private readonly root: string, private readonly steps: DrillSteps,
    private readonly log: Logger, private readonly opts: DrillRunnerOptions = {}) {
    this.slots = new Semaphore(opts.concurrency ?? 1);
  }

  /** Drills a previous process left queued or running end abnormal: their boot and overlay died with it. */
  async recover(): Promise<number> {
    let n = 0;
    for (const sourceId of await this.dirs(this.root)) {
      for (const r of await this.list(sourceId)) {
        if (r.state !== 'queued' && r.state !== 'running') continue;
        await rm(join(this.dir(sourceId, r.drillId), 'work'), { recursive: true, force: true });
        await this.save(this.finish(r, { step: 'drill', code: 'DRILL_INTERRUPTED', message: 'the receiver stopped during the drill', fix: 'run the drill again' }));
        n++;
      }
    }
    return n;
  }

  /** Queue a drill of `imageId` (default: the source's newest image); answers at once with the queued report. */
  async start(sourceId: string, imageId?: string): Promise<DrillReport> {
    if (this.closed) throw new UserError('DRILL_CLOSED', 'the receiver is stopping', 'run the drill again once it is back');
    const images = await this.store.listImages(sourceId).catch(() => []);
    const image = imageId === undefined ? images[images.length - 1] : images.find((i) => i.imageId === imageId);
    if (!image) {
      throw new UserError('NOT_FOUND', imageId === undefined ? `source ${sourceId} has no image to drill yet` : `source ${sourceId} has no image ${imageId}`,
        imageId === undefined ? 'run a first sync cycle, then drill' : 'list the images with `vmlift image ls`');
    }
    const drillId = `d${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
    const report: DrillReport = {
      drillId, sourceId, imageId: image.imageId, state: 'queued', requestedAt: new Date().toISOString(), startedAt: null, endedAt: null,
      steps: [], verdict: null, failure: null, accel: null, secondsToLogin: null, consoleTail: [], screenshot: false,
    };
    await mkdir(this.dir(sourceId, drillId), { recursive: true, mode: 0o700 });
    await this.save(report);
    // The pin is taken before the answer, so retention cannot remove the image between the two.
    const unpin = await this.store.pin(sourceId, image.imageId);
    const p = this.run(report, unpin).catch((e: unknown) => this.log.error({ sourceId, drillId, err: errorMessage(e) }, 'drill failed unexpectedly'));
    this.done.add(p);
    void p.finally(() => this.done.delete(p));
    this.log.info({ sourceId, drillId, imageId: image.imageId }, 'drill queued');
    return report;
  }

  async get(sourceId: string, drillId: string): Promise<DrillReport> {
    assertId(drillId, 'drill id');
    try {
      return JSON.parse(await readFile(join(this.dir(sourceId, drillId), REPORT), 'utf8')) as DrillReport;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new UserError('NOT_FOUND', `source ${sourceId} has no drill ${drillId}`, 'list the drills with `vmlift job show`');
      throw e;
    }
  }

  async list(sourceId: string): Promise<DrillReport[]> {
    const out: DrillReport[] = [];
    for (const id of await this.dirs(join(this.root, sourceId))) out.push(await this.get(sourceId, id).catch(() => null as never));
    return out.filter(Boolean).sort((a, b) => a.requestedAt.localeCompare(b.requestedAt));
  }

  screenshotPath(sourceId: string, drillId: string): string {
    return join(this.dir(sourceId, assertId(drillId, 'drill id')), SCREENSHOT);
  }

  /** Stop running drills (their boots are killed by the steps' signal handling) and wait for them. */
  async close(): Promise<void> {
    this.closed = true;
    for (const c of this.running.values()) c.abort(new UserError('DRILL_INTERRUPTED', 'the receiver is stopping', 'run the drill again'));
    await Promise.allSettled([...this.done]);
  }

  private async run(report: DrillReport, unpin: () => Promise<void>): Promise<void> {
    const { sourceId, drillId, imageId } = report;
    const dir = this.dir(sourceId, drillId);
    const work = join(dir, 'work');
    const abort = new AbortController();
    const release = await this.slots.acquire();
    this.running.set(drillId, abort);
    const deadline = this.opts.deadlineSeconds ?? DEFAULT_DRILL_DEADLINE_SECONDS;
    const timer = setTimeout(() => abort.abort(new UserError('DRILL_TIMEOUT', `the drill ran longer than its deadline of ${deadline} s and was stopped`,
      'raise `receiver serve --drill-deadline` (minutes), or see in the report which step hung')), deadline * 1000);
    const log = this.log.child({ sourceId, drillId, imageId });
    const ctx: DrillStepContext = { signal: abort.signal, log };
    let r: DrillReport = { ...report, state: 'running', startedAt: new Date().toISOString() };
    try {
      if (this.closed) throw new UserError('DRILL_INTERRUPTED', 'the receiver is stopping', 'run the drill again');
      await this.save(r);
      await mkdir(work, { recursive: true });
      const inspection = await this.step(r, 'inspect', () => this.steps.inspect(this.store, sourceId, imageId, ctx), (v) => ({
        ok: v.verdict !== 'blocked', message: `kvm: ${v.verdict}${v.message ? `: ${v.message}` : ''}`, code: v.code, fix: v.fix,
      }));
      r = inspection.report;
      if (inspection.value.verdict === 'blocked') {
        r = this.finish(r, { step: 'inspect', code: inspection.value.code ?? 'DRILL_BLOCKED', message: `the image cannot run on KVM: ${inspection.value.message}`, fix: inspection.value.fix });
        return;
      }
      let converted: string | null = null;
      if (inspection.value.verdict === 'needs conversion') {
        converted = join(work, 'converted');
        const c = await this.step(r, 'convert', () => this.steps.convert(this.store, sourceId, imageId, converted!, ctx), (v) => ({ ok: true, message: v.message }));
        r = c.report;
      }
      const boot = await this.step(r, 'boot', () => this.steps.boot(this.store, sourceId, imageId,
        { converted, reportDir: join(work, 'boot'), timeoutSeconds: this.opts.bootTimeoutSeconds ?? 600, ...ctx }),
      (v) => ({ ok: v.passed, message: v.message, code: v.code, fix: v.fix }));
      r = boot.report;
      const b = boot.value;
      if (b.screenshot) await copyFile(b.screenshot, join(dir, SCREENSHOT)).then(() => { r.screenshot = true; }, () => undefined);
      r = { ...r, accel: b.accel, secondsToLogin: b.secondsToLogin, consoleTail: b.consoleTail };
      r = this.finish(r, b.passed ? null : { step: 'boot', code: b.code ?? 'BOOT_FAILED', message: b.message, fix: b.fix });
    } catch (e) {
      const rep = errorReport(e);
      const failed = r.steps.length && !r.steps[r.steps.length - 1]!.ok ? r.steps[r.steps.length - 1]!.step : 'drill';
      r = this.finish(r, { step: failed, code: rep.code, message: rep.message, fix: rep.fix });
    } finally {
      clearTimeout(timer);
      this.running.delete(drillId);
      await rm(work, { recursive: true, force: true }).catch(() => undefined);
      await this.save(r).catch((e: unknown) => log.error({ err: errorMessage(e) }, 'cannot write the drill report'));
      await unpin().catch(() => undefined);
      release();
      log.info({ verdict: r.verdict, failure: r.failure?.code }, r.verdict ?? 'drill ended');
    }
  }

  /** Runs one step, timing it and recording its line; a throw is recorded as a failed step and passed on. */
  private async step<T>(r: DrillReport, name: DrillStepName, fn: () => Promise<T>,
    line: (v: T) => Omit<DrillStepReport, 'step' | 'seconds'>): Promise<{ report: DrillReport; value: T }> {
    const t0 = Date.now();
    // Saved with the step under way, so that followers (the connector, its console) see what runs now.
    await this.save({ ...r, current: { step: name, startedAt: new Date(t0).toISOString() } });
    try {
      const value = await fn();
      const report = { ...r, steps: [...r.steps, { step: name, seconds: (Date.now() - t0) / 1000, ...line(value) }] };
      await this.save(report);
      return { report, value };
    } catch (e) {
      const rep = errorReport(e);
      r.steps = [...r.steps, { step: name, ok: false, seconds: (Date.now() - t0) / 1000, message: rep.message, code: rep.code, fix: rep.fix }];
      throw e;
    }
  }

  private finish(r: DrillReport, failure: DrillReport['failure']): DrillReport {
    return { ...r, state: failure ? 'abnormal' : 'passed', verdict: failure ? 'drill abnormal' : 'drill passed', failure, endedAt: new Date().toISOString() };
  }

  private dir(sourceId: string, drillId: string): string {
    return join(this.root, assertId(sourceId, 'source id'), assertId(drillId, 'drill id'));
  }

  private async save(r: DrillReport): Promise<void> {
    const f = join(this.dir(r.sourceId, r.drillId), REPORT);
    const tmp = `${f}.tmp-${randomBytes(4).toString('hex')}`;
    await writeFile(tmp, JSON.stringify(r, null, 2), { mode: 0o600 });
    await rename(tmp, f);
  }

  private async dirs(d: string): Promise<string[]> {
    try {
      return (await readdir(d, { withFileTypes: true })).filter((e) => e.isDirectory() && isValidId(e.name)).map((e) => e.name);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
  }
}

/** A drill request refused because this receiver was started without drill steps. */
export function drillsUnavailable(): CodedError {
  return new UserError('DRILLS_UNAVAILABLE', 'this receiver runs no drills', 'start the receiver with `vmlift receiver serve` (it wires the drill steps) on a machine with libguestfs, virt-v2v and QEMU');
}
