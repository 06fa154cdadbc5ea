import type { Command } from 'commander';
import { callApi, connectorHome } from '../home.ts';
import { printResult, table, formatBytes } from '../output.ts';
import { formatDuration } from '../../util/duration.ts';
import type { CycleRecord, DiskRecord, DrillRecord, JobRecord, TemplateRecord, WorkgroupRecord } from '../../state/types.ts';
import type { DrillReport } from '../../transfer/contract.ts';
import type { LiveStatus } from '../../engine/jobs.ts';
import type { MemberDrill, MemberResult } from '../../engine/workgroups.ts';
import { jobCompleteWithin, workgroupCompleteWithin } from '../final-sync.ts';
import { bandwidthLines } from '../bandwidth-lines.ts';
import { forecastLines, type ForecastResult } from '../../engine/final-sync-forecast.ts';

interface Common { home?: string; json?: boolean }

const settingFlags = (c: Command): Command => c
  .option('--interval <duration>', 'sync interval, 1h to 7d (e.g. 12h)')
  .option('--max-images <n>', 'images kept on the receiver, 1-10')
  .option('--compression <level>', 'compression level 0-10 (0 = none)')
  .option('--bandwidth <mbps>', 'bandwidth limit in Mbps, 0 = unlimited')
  .option('--checksum <on|off>', 'verify committed images against source digests')
  .option('--quiesce <on|off>', 'quiesce the guest when snapshotting')
  .option('--transport <name>', 'disk transport: auto, vddk, nbd, http')
  .option('--auto-sync <on|off>', 'run incremental cycles on the interval')
  .option('--bandwidth-window <spec>', 'another limit by day and time, e.g. "Mon-Fri 08:00-18:00 Europe/Paris=50" (Mbps; repeat for several; "none" removes them)',
    (v: string, prev: string[] | undefined) => [...(prev ?? []), v]);

function settingsFrom(o: Record<string, unknown>): Record<string, unknown> {
  const map: Record<string, string> = {
    interval: 'interval', maxImages: 'maxImages', compression: 'compression', bandwidth: 'bandwidth',
    checksum: 'checksum', quiesce: 'quiesce', transport: 'transport', autoSync: 'autoSync', bandwidthWindow: 'bandwidthWindow',
  };
  return Object.fromEntries(Object.entries(map).filter(([k]) => o[k] !== undefined).map(([k, v]) => [v, o[k]]));
}

const finalSyncFlags = (c: Command): Command => c
  .option('--max-final-sync <duration>', 'first run incremental cycles back to back until the forecast final sync fits (e.g. 5m), then ask to stop the services')
  .option('--yes', 'with --max-final-sync: do not ask, complete as soon as the final sync fits');

const homeOpt = (c: Command): Command => c
  .option('--home <dir>', 'connector home (default $VMLIFT_HOME or ~/.vmlift)')
  .option('--json', 'print JSON');

function jobLine(j: JobRecord): (string | number)[] {
  return [j.id, j.vmRef ?? '-', j.state, j.error ? `${j.error.step}: ${j.error.message}` : '', j.nextSyncAt ?? '-', j.workgroupId ?? '-'];
}

function printMembers(json: boolean | undefined, results: MemberResult[]): void {
  printResult(json, results, (r) => table(['SOURCE', 'OK', 'STATE', 'REASON'], r.map((m) => [m.jobId, m.ok ? 'yes' : 'no', m.state ?? '', m.reason ?? ''])));
  if (results.some((m) => !m.ok)) process.exitCode = 1;
}

/** One line per disk: why it is (or was last) read through its transport. */
function transportReasons(disks: DiskRecord[], live: Map<number, LiveStatus['disks'][number]>): string[] {
  const keys = [...new Set([...disks.map((d) => d.diskKey), ...live.keys()])];
  return keys.flatMap((k) => {
    const l = live.get(k);
    const d = disks.find((x) => x.diskKey === k);
    const t = l?.transport ?? d?.transport;
    const why = l?.transportReason ?? d?.transportReason;
    return t ? [`  disk ${k}: ${t}${why ? ` (${why})` : ''}`] : [];
  });
}

/** The last drill of a job, for `job show`: its verdict, time, how far the boot got, the failure and the report. */
export function drillLines(d: DrillRecord | undefined): string[] {
  if (!d) return [];
  const r = d.report as unknown as DrillReport;
  const head = d.verdict
    ? `last drill: ${d.verdict} (image ${d.imageId}, ${d.endedAt})${r.secondsToLogin != null ? `: login reached in ${r.secondsToLogin.toFixed(0)} s (${r.accel})` : ''}`
    : `last drill: ${d.state} (image ${d.imageId}, requested ${d.requestedAt})`;
  const steps = (r.steps ?? []).map((s) => `  ${s.step}: ${s.ok ? 'ok' : 'failed'} in ${s.seconds.toFixed(0)} s: ${s.message}`);
  const failure = r.failure ? [`  ${r.failure.step}: ${r.failure.code}: ${r.failure.message}`, ...(r.failure.fix ? [`  fix: ${r.failure.fix}`] : [])] : [];
  const tail = d.verdict && r.failure && r.consoleTail?.length ? ['  console:', ...r.consoleTail.slice(-5).map((l) => `    ${l}`)] : [];
  return [head, ...steps, ...failure, ...tail, ...(d.reportDir ? [`  report: ${d.reportDir}`] : [])];
}

const drillCell = (d: MemberDrill | null | undefined): string => !d ? '-' : `${d.verdict ?? d.state} (image ${d.imageId}, ${d.at})`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function register(program: Command): void {
  const job = program.command('job').description('agentless migration jobs (one VM each), run by the connector');

  settingFlags(homeOpt(job.command('create').description('create a job for a VM')
    .argument('<id>', 'job id ([a-z0-9-])')
    .requiredOption('--vm <name|moref>', 'the VM to migrate')
    .option('--template <name>', 'start from a template\'s settings')))
    .action(async (id: string, o: Common & { vm: string; template?: string }) => {
      const j = await callApi<JobRecord>(connectorHome(o.home), 'POST', '/v1/jobs', { id, vm: o.vm, template: o.template, settings: settingsFrom(o as unknown as Record<string, unknown>) });
      printResult(o.json, j, (x) => `created job ${x.id} for ${x.name} (${x.vmRef}); start it with: vmlift job start ${x.id}`);
    });

  for (const action of ['start', 'sync', 'pause', 'resume', 'complete'] as const) {
    const help = {
      start: 'start the job: preflight, enable CBT, full sync, then incrementals on the interval',
      sync: 'run an incremental sync now', pause: 'stop reading and keep state', resume: 'resume a paused or failed job',
      complete: 'one final sync (stop the VM\'s services first), then no more cycles',
    }[action];
    const cmd = homeOpt(job.command(action).description(help).argument('<id>'));
    if (action === 'complete') finalSyncFlags(cmd);
    cmd.action(async (id: string, o: Common & { maxFinalSync?: string; yes?: boolean }) => {
      if (o.maxFinalSync !== undefined) return jobCompleteWithin(connectorHome(o.home), id, { maxFinalSync: o.maxFinalSync, yes: o.yes, json: o.json });
      const j = await callApi<JobRecord>(connectorHome(o.home), 'POST', `/v1/jobs/${encodeURIComponent(id)}/${action}`);
      printResult(o.json, j, (x) => `job ${x.id}: ${x.state}`);
    });
  }

  settingFlags(homeOpt(job.command('set').description('change settings; bandwidth and compression reach a running cycle within seconds').argument('<id>')))
    .action(async (id: string, o: Common) => {
      const j = await callApi<JobRecord>(connectorHome(o.home), 'PATCH', `/v1/jobs/${encodeURIComponent(id)}/settings`, settingsFrom(o as unknown as Record<string, unknown>));
      printResult(o.json, j, (x) => `job ${x.id}: ${JSON.stringify(x.settings)}`);
    });

  homeOpt(job.command('delete').description('delete the job and its snapshots').argument('<id>')
    .option('--remove-images', 'also delete its images on the receiver'))
    .action(async (id: string, o: Common & { removeImages?: boolean }) => {
      const r = await callApi(connectorHome(o.home), 'DELETE', `/v1/jobs/${encodeURIComponent(id)}${o.removeImages ? '?removeImages=1' : ''}`);
      printResult(o.json, r, () => `deleted job ${id}`);
    });

  homeOpt(job.command('drill').description('inspect, convert and boot-test the job\'s newest image on the receiver while the job keeps syncing')
    .argument('<id>').option('--image <id>', 'drill this image instead of the newest').option('--wait', 'wait for the result; exit 1 when the drill is abnormal'))
    .action(async (id: string, o: Common & { image?: string; wait?: boolean }) => {
      const home = connectorHome(o.home);
      let d = await callApi<DrillRecord>(home, 'POST', `/v1/jobs/${encodeURIComponent(id)}/drill`, o.image ? { imageId: o.image } : {});
      if (o.wait) {
        while (!d.verdict) {
          await sleep(2000);
          const r = await callApi<{ drills: DrillRecord[] }>(home, 'GET', `/v1/jobs/${encodeURIComponent(id)}`);
          d = r.drills.find((x) => x.id === d.id) ?? d;
        }
        if (d.verdict !== 'drill passed') process.exitCode = 1;
      }
      printResult(o.json, d, (x) => x.verdict ? drillLines(x).join('\n') : `drill ${x.id} of image ${x.imageId} ${x.state}; \`vmlift job show ${id}\` shows its result`);
    });

  homeOpt(job.command('ls').description('list jobs')).action(async (o: Common) => {
    const jobs = await callApi<JobRecord[]>(connectorHome(o.home), 'GET', '/v1/jobs');
    printResult(o.json, jobs, (js) => table(['JOB', 'VM', 'STATE', 'ERROR', 'NEXT SYNC', 'WORKGROUP'], js.map(jobLine)));
  });

  homeOpt(job.command('show').description('a job\'s disks with progress, speed and remaining time, recent cycles and images').argument('<id>'))
    .action(async (id: string, o: Common) => {
      const r = await callApi<{ job: JobRecord; disks: DiskRecord[]; cycles: CycleRecord[]; live: LiveStatus | null; images: unknown; drills?: DrillRecord[]; finalSync?: ForecastResult }>(
        connectorHome(o.home), 'GET', `/v1/jobs/${encodeURIComponent(id)}`);
      printResult(o.json, r, (x) => {
        const live = new Map((x.live?.disks ?? []).map((d) => [d.diskKey, d]));
        const lines = [
          `job ${x.job.id}  vm ${x.job.vmRef}  state ${x.job.state}${x.live ? ` (cycle ${x.live.cycleId}, step ${x.live.step}${x.live.taskProgress !== undefined ? `, vCenter task ${x.live.taskProgress} %` : ''})` : ''}`,
          ...(x.job.error ? [`error in ${x.job.error.step} (attempt ${x.job.error.attempts}): ${x.job.error.message}`] : []),
          ...(x.job.error?.fix ? [`  fix: ${x.job.error.fix}`] : []),
          ...(x.finalSync && x.job.state !== 'completed' ? forecastLines(x.finalSync, x.live !== null) : []),
          ...bandwidthLines(x.job.settings, x.live?.bandwidthMbps),
          '',
          table(['DISK', 'LABEL', 'CAPACITY', 'DONE', 'TOTAL', 'SPEED', 'REMAINING', 'TRANSPORT', 'CHANGE ID'], x.disks.map((d) => {
            const l = live.get(d.diskKey);
            return [d.diskKey, d.label, formatBytes(d.capacity), l ? formatBytes(l.done) : '-', l ? formatBytes(l.total) : '-',
              l ? `${formatBytes(l.speed)}/s` : '-', l?.remainingSeconds != null ? formatDuration(l.remainingSeconds) : '-',
              l?.transport ?? d.transport ?? '-', d.changeId ?? '-'];
          })),
          ...transportReasons(x.disks, live),
          '',
          table(['CYCLE', 'SEQ', 'KIND', 'STATE', 'IMAGE', 'STARTED', 'READ', 'WIRE', 'ERROR'], x.cycles.map((c) => [
            c.id, c.seq, c.kind, c.state, c.imageId ?? '-', c.startedAt, formatBytes(c.sourceBytesRead), formatBytes(c.wireBytes), c.error ?? ''])),
        ];
        if (Array.isArray(x.images)) {
          lines.push('', table(['IMAGE', 'COMMITTED'], (x.images as { imageId: string; committedAt: string }[]).map((i) => [i.imageId, i.committedAt])));
        }
        const drill = drillLines(x.drills?.[0]);
        if (drill.length) lines.push('', ...drill);
        return lines.join('\n');
      });
    });

  const wg = program.command('workgroup').description('groups of up to 50 sources with batch actions');
  homeOpt(wg.command('create').argument('<id>').option('--name <name>')).action(async (id: string, o: Common & { name?: string }) => {
    const w = await callApi<WorkgroupRecord>(connectorHome(o.home), 'POST', '/v1/workgroups', { id, name: o.name });
    printResult(o.json, w, (x) => `created workgroup ${x.id}`);
  });
  for (const op of ['add', 'remove'] as const) {
    homeOpt(wg.command(op).description(`${op} jobs ${op === 'add' ? 'to' : 'from'} a workgroup`).argument('<id>').argument('<jobs...>'))
      .action(async (id: string, jobs: string[], o: Common) => {
        printMembers(o.json, await callApi<MemberResult[]>(connectorHome(o.home), 'POST', `/v1/workgroups/${encodeURIComponent(id)}/${op}`, { jobs }));
      });
  }
  for (const action of ['start', 'sync', 'pause', 'resume', 'complete'] as const) {
    const cmd = homeOpt(wg.command(action).description(`${action} every source of the workgroup`).argument('<id>'));
    if (action === 'complete') finalSyncFlags(cmd);
    cmd.action(async (id: string, o: Common & { maxFinalSync?: string; yes?: boolean }) => {
      if (o.maxFinalSync !== undefined) return workgroupCompleteWithin(connectorHome(o.home), id, { maxFinalSync: o.maxFinalSync, yes: o.yes, json: o.json });
      printMembers(o.json, await callApi<MemberResult[]>(connectorHome(o.home), 'POST', `/v1/workgroups/${encodeURIComponent(id)}/${action}`));
    });
  }
  homeOpt(wg.command('drill').description('drill every source\'s newest image (one boot at a time on the receiver); the jobs keep syncing').argument('<id>'))
    .action(async (id: string, o: Common) => {
      printMembers(o.json, await callApi<MemberResult[]>(connectorHome(o.home), 'POST', `/v1/workgroups/${encodeURIComponent(id)}/drill`));
    });
  homeOpt(wg.command('ls')).action(async (o: Common) => {
    const ws = await callApi<WorkgroupRecord[]>(connectorHome(o.home), 'GET', '/v1/workgroups');
    printResult(o.json, ws, (x) => table(['WORKGROUP', 'NAME', 'SOURCES'], x.map((w) => [w.id, w.name, w.members.length])));
  });
  homeOpt(wg.command('show').argument('<id>')).action(async (id: string, o: Common) => {
    const s = await callApi<{ workgroup: WorkgroupRecord; members: { jobId: string; state: string; error: string | null; drill?: MemberDrill | null }[] }>(
      connectorHome(o.home), 'GET', `/v1/workgroups/${encodeURIComponent(id)}`);
    printResult(o.json, s, (x) => `workgroup ${x.workgroup.id} (${x.members.length}/50)\n${table(['SOURCE', 'STATE', 'LAST DRILL', 'ERROR'], x.members.map((m) => [m.jobId, m.state, drillCell(m.drill), m.error ?? '']))}`);
  });

  const tpl = program.command('template').description('named job settings');
  settingFlags(homeOpt(tpl.command('create').argument('<name>'))).action(async (name: string, o: Common) => {
    const t = await callApi<TemplateRecord>(connectorHome(o.home), 'PUT', `/v1/templates/${encodeURIComponent(name)}`, settingsFrom(o as unknown as Record<string, unknown>));
    printResult(o.json, t, (x) => `template ${x.name}: ${JSON.stringify(x.settings)}`);
  });
  homeOpt(tpl.command('ls')).action(async (o: Common) => {
    const ts = await callApi<TemplateRecord[]>(connectorHome(o.home), 'GET', '/v1/templates');
    printResult(o.json, ts, (x) => table(['TEMPLATE', 'SETTINGS'], x.map((t) => [t.name, JSON.stringify(t.settings)])));
  });
  homeOpt(tpl.command('show').argument('<name>')).action(async (name: string, o: Common) => {
    const t = await callApi<TemplateRecord>(connectorHome(o.home), 'GET', `/v1/templates/${encodeURIComponent(name)}`);
    printResult(o.json, t, (x) => JSON.stringify(x.settings, null, 2));
  });
  homeOpt(tpl.command('rm').argument('<name>')).action(async (name: string, o: Common) => {
    const r = await callApi(connectorHome(o.home), 'DELETE', `/v1/templates/${encodeURIComponent(name)}`);
    printResult(o.json, r, () => `removed template ${name}`);
  });
}
