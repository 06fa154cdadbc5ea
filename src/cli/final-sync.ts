/**
 * `job complete --max-final-sync 5m` and `workgroup complete --max-final-sync 5m`: ask the connector
 * to run incremental cycles back to back until the forecast final sync fits (engine/converge.ts),
 * follow it, then ask the user to stop the services (or `--yes`) and complete. An unreachable bound
 * ends with the measured rates and exit 1, and the job keeps syncing as before.
 */
import { createInterface } from 'node:readline';
import { UserError } from '../util/errors.ts';
import { parseDuration } from '../util/duration.ts';
import { callApi } from './home.ts';
import { printResult, table } from './output.ts';
import type { ConvergeStatus } from '../engine/converge.ts';
import { formatSeconds } from '../engine/final-sync-forecast.ts';
import type { JobRecord } from '../state/types.ts';
import type { MemberResult } from '../engine/workgroups.ts';

export interface FinalSyncFlags { maxFinalSync: string; yes?: boolean; json?: boolean }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const POLL_MS = Number(process.env.VMLIFT_CONVERGE_POLL_MS ?? 1000);

function boundOf(text: string): number {
  const s = parseDuration(text, '--max-final-sync');
  if (s <= 0) throw new UserError('BAD_MAX_FINAL_SYNC', `--max-final-sync must be more than 0 s, got ${JSON.stringify(text)}`, 'pass a duration like 5m or 90s');
  return s;
}

function progress(json: boolean | undefined, s: ConvergeStatus, shown: Map<string, number>): void {
  if (json) return;
  for (const step of s.steps.slice(shown.get(s.jobId) ?? 0)) {
    const f = step.forecastSeconds === null ? 'no forecast yet' : `final sync forecast ~${formatSeconds(step.forecastSeconds)}`;
    process.stderr.write(`${s.jobId}: ${step.cycleId ? `after cycle ${step.cycleId}` : 'now'}: ${f} (bound ${formatSeconds(s.maxFinalSyncSeconds)})\n`);
  }
  shown.set(s.jobId, s.steps.length);
}

/** Waits for the user's Enter on stdin; EOF without one refuses. */
async function confirm(question: string): Promise<void> {
  process.stderr.write(question);
  const rl = createInterface({ input: process.stdin });
  const answered = await new Promise<boolean>((resolve) => {
    rl.once('line', () => resolve(true));
    rl.once('close', () => resolve(false));
  });
  rl.close();
  if (!answered) throw new UserError('NOT_CONFIRMED', 'the final sync was not confirmed (stdin ended); the job keeps syncing', 'stop the services, then run the command again with --yes, or answer the prompt');
}

function unreachable(statuses: ConvergeStatus[]): UserError {
  const bad = statuses.filter((s) => s.state !== 'converged');
  const message = bad.map((s) => `${s.jobId}: ${s.message}`).join('\n');
  if (bad.some((s) => s.state === 'unreachable')) {
    return new UserError('FINAL_SYNC_UNREACHABLE', message,
      'lower the write load on the source, raise the bandwidth (`--bandwidth`, windows), or choose a larger --max-final-sync; the job keeps syncing on its interval');
  }
  return new UserError('CONVERGE_FAILED', message, 'fix what each line names (`vmlift job show`), then run the command again; nothing was completed');
}

export async function jobCompleteWithin(home: string, id: string, o: FinalSyncFlags): Promise<void> {
  const maxFinalSyncSeconds = boundOf(o.maxFinalSync);
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  let s = await callApi<ConvergeStatus>(home, 'POST', `${path}/converge`, { maxFinalSyncSeconds });
  const shown = new Map<string, number>();
  while (s.state === 'running') {
    progress(o.json, s, shown);
    await sleep(POLL_MS);
    s = await callApi<ConvergeStatus>(home, 'GET', `${path}/converge`);
  }
  progress(o.json, s, shown);
  if (s.state !== 'converged') throw unreachable([s]);
  if (!o.yes) {
    await confirm(`${id}: ${s.message}.\nStop the services on the source now; press Enter when they are stopped to run the final sync (Ctrl-C leaves the job syncing): `);
  }
  const job = await callApi<JobRecord>(home, 'POST', `${path}/complete`);
  printResult(o.json, { converge: s, job }, (x) => `job ${x.job.id}: ${x.job.state} (final sync forecast ~${formatSeconds(x.converge.forecast?.seconds ?? 0)})`);
}

export async function workgroupCompleteWithin(home: string, id: string, o: FinalSyncFlags): Promise<void> {
  const maxFinalSyncSeconds = boundOf(o.maxFinalSync);
  const path = `/v1/workgroups/${encodeURIComponent(id)}`;
  let all = await callApi<ConvergeStatus[]>(home, 'POST', `${path}/converge`, { maxFinalSyncSeconds });
  const shown = new Map<string, number>();
  while (all.some((s) => s.state === 'running')) {
    for (const s of all) progress(o.json, s, shown);
    await sleep(POLL_MS);
    all = (await callApi<(ConvergeStatus | null)[]>(home, 'GET', `${path}/converge`)).filter((s): s is ConvergeStatus => s !== null);
  }
  for (const s of all) progress(o.json, s, shown);
  if (all.some((s) => s.state !== 'converged')) {
    if (!o.json) process.stderr.write(`${table(['SOURCE', 'RESULT', 'CYCLES', 'MESSAGE'], all.map((s) => [s.jobId, s.state, s.cycles, s.message]))}\n`);
    throw unreachable(all);
  }
  if (!o.yes) {
    const worst = Math.max(...all.map((s) => s.forecast?.seconds ?? 0));
    await confirm(`workgroup ${id}: every source's final sync fits (the longest ~${formatSeconds(worst)}).\nStop the services on the sources now; press Enter when they are stopped (Ctrl-C leaves them syncing): `);
  }
  const results = await callApi<MemberResult[]>(home, 'POST', `${path}/complete`);
  printResult(o.json, { converge: all, results }, (x) => table(['SOURCE', 'OK', 'STATE', 'REASON'], x.results.map((m) => [m.jobId, m.ok ? 'yes' : 'no', m.state ?? '', m.reason ?? ''])));
  if (results.some((m) => !m.ok)) process.exitCode = 1;
}
