import type { Command } from 'commander';
import { UserError } from '../../util/errors.ts';
import { callApi, connectorHome } from '../home.ts';
import { printResult, table, formatBytes } from '../output.ts';
import { formatDuration } from '../../util/duration.ts';
import type { CycleRecord, DiskRecord, DrillRecord, JobRecord, TemplateRecord, WorkgroupRecord } from '../../state/types.ts';
import type { DrillReport } from '../../transfer/contract.ts';
import type { LiveStatus } from '../../engine/jobs.ts';
import type { MemberDrill, MemberResult, StateCounts, WorkgroupSummary } from '../../engine/workgroups.ts';
import type { ImageInfo } from '../../model/images.ts';
import { imageDisks } from '../image-disks.ts';
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
  return [j.id, j.name, j.kind === 'agent' ? `agent ${j.name}` : j.vmRef ?? '-', j.state, j.error ? `${j.error.step}: ${j.error.code ? `${j.error.code}: ` : ''}${j.error.message}` : '', j.nextSyncAt ?? '-', j.workgroupId ?? '-'];
}

function memberTable(r: MemberResult[]): string {
  return table(['SOURCE', 'OK', 'STATE', 'REASON', 'FIX'], r.map((m) => [m.jobId, m.ok ? 'yes' : 'no', m.state ?? '', m.reason ? `${m.code ? `${m.code}: ` : ''}${m.reason}` : '', m.fix ?? '']));
}

function printMembers(json: boolean | undefined, results: MemberResult[]): void {
  printResult(json, results, memberTable);
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

/** A job's failing step, code, message, fix and attempts, and the command that retries it. */
export function errorLines(e: JobRecord['error']): string[] {
  if (!e) return [];
  return [
    `error in step ${e.step}${e.code ? ` (${e.code})` : ''}, attempt ${e.attempts}, at ${e.at}: ${e.message}`,
    ...(e.fix ? [`  fix: ${e.fix}`] : []),
    ...(e.code ? [`  see docs/errors.md#${e.code.toLowerCase()}`] : []),
  ];
}

const countsCell = (c: StateCounts | undefined): string => Object.entries(c ?? {}).map(([s, n]) => `${n} ${s}`).join(', ') || '-';

const drillCell = (d: MemberDrill | null | undefined): string => !d ? '-' : `${d.verdict ?? d.state} (image ${d.imageId}, ${d.at})`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function register(program: Command): void {
  const job = program.command('job').description('migration jobs, run by the connector: one VM each (--vm), or an agent source\'s devices (--agent)');

  settingFlags(homeOpt(job.command('create').description('create a job for a VM (--vm) or an agent source (--agent); it starts at once (preflight, full sync) unless --no-start')
    .argument('<id>', 'job id ([a-z0-9-])')
    .option('--vm <name|moref>', 'the VM to migrate')
    .option('--agent <id>', 'the agent (`vmlift agent serve` on the source server) whose devices to migrate')
    .option('--devices <paths>', 'with --agent: the devices to read, comma-separated (default: the agent\'s own list)')
    .option('--template <name>', 'start from a template\'s settings')
    .option('--name <name>', 'display name (default: the VM\'s name, or the agent\'s id)')
    .option('--description <text>', 'free text, up to 256 characters')
    .option('--disks <positions>', 'with --vm: read only these disks, by position in device-key order (e.g. 0,2)')
    .option('--exclude-disk <key>', 'with --vm: leave out the disk with this device key (repeatable); it is never read', (v: string, acc: string[] = []) => [...acc, v])
    .option('--no-start', 'keep the job in created; start it later with `vmlift job start`')))
    .action(async (id: string, o: Common & { vm?: string; agent?: string; devices?: string; template?: string; name?: string; description?: string; disks?: string; excludeDisk?: string[]; start: boolean }) => {
      const settings = settingsFrom(o as unknown as Record<string, unknown>);
      if (!!o.vm === !!o.agent) throw new UserError('BAD_ARGS', o.vm ? '--vm and --agent exclude each other' : 'neither --vm nor --agent given', 'pass --vm NAME for a VM, or --agent ID [--devices /dev/sda,/dev/sdb] for an agent source');
      if (o.devices && !o.agent) throw new UserError('BAD_ARGS', '--devices goes with --agent', 'pass --agent ID --devices …, or pick a VM\'s disks with --disks or --exclude-disk');
      if (o.agent && (o.disks !== undefined || o.excludeDisk)) throw new UserError('BAD_ARGS', '--disks and --exclude-disk go with --vm', 'pick an agent\'s devices with --devices /dev/sda,/dev/sdb');
      const disks = { ...(o.disks !== undefined ? { include: o.disks } : {}), ...(o.excludeDisk ? { exclude: o.excludeDisk.join(',') } : {}) };
      const common = { id, template: o.template, name: o.name, description: o.description, start: o.start, settings };
      const body = o.agent ? { ...common, agent: o.agent, devices: o.devices } : { ...common, vm: o.vm, disks };
      const j = await callApi<JobRecord>(connectorHome(o.home), 'POST', '/v1/jobs', body);
      const what = (x: JobRecord): string => x.kind === 'agent' ? `agent ${x.name}` : `${x.name} (${x.vmRef})`;
      printResult(o.json, j, (x) => x.state === 'created'
        ? `created job ${x.id} for ${what(x)}; start it with: vmlift job start ${x.id}`
        : `created job ${x.id} for ${what(x)}: ${x.state}; follow it with: vmlift job show ${x.id}`);
    });

  for (const action of ['start', 'sync', 'pause', 'resume', 'complete'] as const) {
    const help = {
      start: 'start a job created with --no-start: preflight, enable CBT, full sync, then incrementals on the interval',
      sync: 'run an incremental sync now', pause: 'stop reading and keep state', resume: 'resume a paused or failed job',
      complete: 'one final sync (stop the VM\'s services first), then no more cycles; --no-final-sync completes on the last image',
    }[action];
    const cmd = homeOpt(job.command(action).description(help).argument('<id>'));
    if (action === 'complete') {
      cmd.option('--no-final-sync', 'complete at once on the last committed image, without a final sync');
      finalSyncFlags(cmd);
    }
    cmd.action(async (id: string, o: Common & { finalSync?: boolean; maxFinalSync?: string; yes?: boolean }) => {
      if (o.maxFinalSync !== undefined && o.finalSync === false) throw new UserError('BAD_ARGS', '--max-final-sync and --no-final-sync exclude each other', 'converge with --max-final-sync, or complete on the last image with --no-final-sync');
      if (o.maxFinalSync !== undefined) return jobCompleteWithin(connectorHome(o.home), id, { maxFinalSync: o.maxFinalSync, yes: o.yes, json: o.json });
      const j = await callApi<JobRecord>(connectorHome(o.home), 'POST', `/v1/jobs/${encodeURIComponent(id)}/${action}`,
        action === 'complete' && o.finalSync === false ? { finalSync: false } : undefined);
      printResult(o.json, j, (x) => `job ${x.id}: ${x.state}`);
    });
  }

  settingFlags(homeOpt(job.command('set').description('change settings, the name or the description; bandwidth and compression reach a running cycle within seconds').argument('<id>')
    .option('--name <name>', 'new display name').option('--description <text>', 'new description (\'\' clears it)')))
    .action(async (id: string, o: Common & { name?: string; description?: string }) => {
      const home = connectorHome(o.home);
      const settings = settingsFrom(o as unknown as Record<string, unknown>);
      if (o.name === undefined && o.description === undefined && !Object.keys(settings).length) {
        throw new UserError('BAD_SETTING', 'job set was given nothing to change', 'pass a setting (e.g. --bandwidth 100), --name or --description');
      }
      let j: JobRecord | undefined;
      if (o.name !== undefined || o.description !== undefined) {
        j = await callApi<JobRecord>(home, 'PATCH', `/v1/jobs/${encodeURIComponent(id)}`, { name: o.name, description: o.description });
      }
      if (Object.keys(settings).length) j = await callApi<JobRecord>(home, 'PATCH', `/v1/jobs/${encodeURIComponent(id)}/settings`, settings);
      printResult(o.json, j!, (x) => `job ${x.id} (${x.name}${x.description ? `: ${x.description}` : ''}): ${JSON.stringify(x.settings)}`);
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
    printResult(o.json, jobs, (js) => table(['JOB', 'NAME', 'VM', 'STATE', 'ERROR', 'NEXT SYNC', 'WORKGROUP'], js.map(jobLine)));
  });

  homeOpt(job.command('show').description('a job\'s disks with progress, speed and remaining time, recent cycles and images').argument('<id>'))
    .action(async (id: string, o: Common) => {
      const r = await callApi<{ job: JobRecord; disks: DiskRecord[]; cycles: CycleRecord[]; live: LiveStatus | null; images: unknown; drills?: DrillRecord[]; finalSync?: ForecastResult }>(
        connectorHome(o.home), 'GET', `/v1/jobs/${encodeURIComponent(id)}`);
      printResult(o.json, r, (x) => {
        const live = new Map((x.live?.disks ?? []).map((d) => [d.diskKey, d]));
        const lines = [
          `job ${x.job.id} (${x.job.name})  ${x.job.kind === 'agent' ? `agent ${x.job.name}` : `vm ${x.job.vmRef}`}  state ${x.job.state}${x.live ? ` (cycle ${x.live.cycleId}, step ${x.live.step}${x.live.taskProgress !== undefined ? `, vCenter task ${x.live.taskProgress} %` : ''})` : ''}`,
          ...(x.job.description ? [`  ${x.job.description}`] : []),
          ...(x.job.disks ? [`  disks: ${x.job.disks.include ? `positions ${x.job.disks.include.join(', ')} only` : `all but device key(s) ${x.job.disks.exclude!.join(', ')}`}`] : []),
          ...errorLines(x.job.error),
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
          lines.push('', table(['IMAGE', 'COMMITTED', 'DISKS'], (x.images as ImageInfo[]).map((i) => [i.imageId, i.committedAt, imageDisks(i)])));
        }
        const drill = drillLines(x.drills?.[0]);
        if (drill.length) lines.push('', ...drill);
        return lines.join('\n');
      });
    });

  const wg = program.command('workgroup').description('groups of up to 50 sources with batch actions (at most 50 workgroups)');
  settingFlags(homeOpt(wg.command('create').description('create a workgroup; with --vms also a job per VM (started unless --no-start)').argument('<id>', 'workgroup id ([a-z0-9-])')
    .option('--name <name>', 'display name: 2-64 characters, a letter or CJK character first, then letters, digits and : . _ -')
    .option('--description <text>', 'free text, up to 256 characters')
    .option('--vms <a,b,c>', 'create a job for each of these VMs in the workgroup')
    .option('--template <name>', 'the jobs\' settings from this template')
    .option('--no-start', 'keep the jobs --vms creates in created')))
    .action(async (id: string, o: Common & { name?: string; description?: string; vms?: string; template?: string; start: boolean }) => {
      const r = await callApi<{ workgroup: WorkgroupRecord; jobs: MemberResult[] }>(connectorHome(o.home), 'POST', '/v1/workgroups', {
        id, name: o.name, description: o.description, template: o.template, start: o.start,
        ...(o.vms !== undefined ? { vms: o.vms.split(',') } : {}), settings: settingsFrom(o as unknown as Record<string, unknown>),
      });
      printResult(o.json, r, (x) => [`created workgroup ${x.workgroup.id} (${x.workgroup.name})`,
        ...(x.jobs.length ? [memberTable(x.jobs)] : [])].join('\n'));
      if (r.jobs.some((m) => !m.ok)) process.exitCode = 1;
    });
  homeOpt(wg.command('set').description('change the name or description, or bandwidth, compression and checksum of every member').argument('<id>')
    .option('--name <name>', 'new display name').option('--description <text>', 'new description')
    .option('--bandwidth <mbps>', 'bandwidth limit of each member in Mbps, 0 = unlimited')
    .option('--compression <level>', 'compression level 0-10 of each member')
    .option('--checksum <on|off>', 'verify committed images against source digests, for each member'))
    .action(async (id: string, o: Common & { name?: string; description?: string; bandwidth?: string; compression?: string; checksum?: string }) => {
      const home = connectorHome(o.home);
      const settings = settingsFrom(o as unknown as Record<string, unknown>);
      if (o.name === undefined && o.description === undefined && !Object.keys(settings).length) {
        throw new UserError('BAD_SETTING', 'workgroup set was given nothing to change', 'pass --name, --description, --bandwidth, --compression or --checksum');
      }
      const out: { workgroup?: WorkgroupRecord; members?: MemberResult[] } = {};
      if (o.name !== undefined || o.description !== undefined) out.workgroup = await callApi<WorkgroupRecord>(home, 'PATCH', `/v1/workgroups/${encodeURIComponent(id)}`, { name: o.name, description: o.description });
      if (Object.keys(settings).length) out.members = await callApi<MemberResult[]>(home, 'PATCH', `/v1/workgroups/${encodeURIComponent(id)}/settings`, settings);
      printResult(o.json, out, (x) => [...(x.workgroup ? [`workgroup ${x.workgroup.id}: ${x.workgroup.name}${x.workgroup.description ? ` (${x.workgroup.description})` : ''}`] : []),
        ...(x.members ? [memberTable(x.members)] : [])].join('\n'));
      if (out.members?.some((m) => !m.ok)) process.exitCode = 1;
    });
  homeOpt(wg.command('delete').description('delete a workgroup (its jobs stay); refused while members sync unless --detach').argument('<id>')
    .option('--detach', 'remove the members first, even while they sync (they go on as jobs of no workgroup)'))
    .action(async (id: string, o: Common & { detach?: boolean }) => {
      const r = await callApi<{ deleted: string; detached: string[] }>(connectorHome(o.home), 'DELETE', `/v1/workgroups/${encodeURIComponent(id)}${o.detach ? '?detach=1' : ''}`);
      printResult(o.json, r, (x) => `deleted workgroup ${x.deleted}${x.detached.length ? `; its jobs ${x.detached.join(', ')} belong to no workgroup now` : ''}`);
    });
  for (const op of ['add', 'remove'] as const) {
    homeOpt(wg.command(op).description(`${op} jobs ${op === 'add' ? 'to' : 'from'} a workgroup`).argument('<id>').argument('<jobs...>'))
      .action(async (id: string, jobs: string[], o: Common) => {
        printMembers(o.json, await callApi<MemberResult[]>(connectorHome(o.home), 'POST', `/v1/workgroups/${encodeURIComponent(id)}/${op}`, { jobs }));
      });
  }
  for (const action of ['start', 'sync', 'pause', 'resume', 'complete'] as const) {
    const cmd = homeOpt(wg.command(action).description(`${action} every source of the workgroup`).argument('<id>'));
    if (action === 'start') cmd.option('--dry-run', 'start nothing: list each member that cannot start and why (states, and vCenter preflight of first cycles)');
    if (action === 'complete') finalSyncFlags(cmd);
    cmd.action(async (id: string, o: Common & { dryRun?: boolean; maxFinalSync?: string; yes?: boolean }) => {
      if (o.maxFinalSync !== undefined) return workgroupCompleteWithin(connectorHome(o.home), id, { maxFinalSync: o.maxFinalSync, yes: o.yes, json: o.json });
      printMembers(o.json, await callApi<MemberResult[]>(connectorHome(o.home), 'POST', `/v1/workgroups/${encodeURIComponent(id)}/${o.dryRun ? 'start-dry-run' : action}`));
    });
  }
  homeOpt(wg.command('drill').description('drill every source\'s newest image (one boot at a time on the receiver); the jobs keep syncing').argument('<id>'))
    .action(async (id: string, o: Common) => {
      printMembers(o.json, await callApi<MemberResult[]>(connectorHome(o.home), 'POST', `/v1/workgroups/${encodeURIComponent(id)}/drill`));
    });
  homeOpt(wg.command('ls').description('workgroups with their members counted by state')).action(async (o: Common) => {
    const ws = await callApi<WorkgroupSummary[]>(connectorHome(o.home), 'GET', '/v1/workgroups');
    printResult(o.json, ws, (x) => table(['WORKGROUP', 'NAME', 'SOURCES', 'STATES', 'DESCRIPTION'], x.map((w) => [w.id, w.name, w.members.length, countsCell(w.counts), w.description])));
  });
  homeOpt(wg.command('show').description('a workgroup: its members counted by state, each member\'s state, last drill and error').argument('<id>')).action(async (id: string, o: Common) => {
    const s = await callApi<{ workgroup: WorkgroupRecord; counts: StateCounts; members: { jobId: string; state: string; error: string | null; drill?: MemberDrill | null }[] }>(
      connectorHome(o.home), 'GET', `/v1/workgroups/${encodeURIComponent(id)}`);
    printResult(o.json, s, (x) => [`workgroup ${x.workgroup.id} (${x.workgroup.name}, ${x.members.length}/50): ${countsCell(x.counts)}`,
      ...(x.workgroup.description ? [`  ${x.workgroup.description}`] : []),
      table(['SOURCE', 'STATE', 'LAST DRILL', 'ERROR'], x.members.map((m) => [m.jobId, m.state, drillCell(m.drill), m.error ?? '']))].join('\n'));
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
