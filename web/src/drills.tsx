// A job's drills on its page: state (symbol and word), the step under way and the steps done with their
// durations (live from the event stream), the failure with its fix, and the console screenshot.
import { useEffect, useState } from 'preact/hooks';
import type { Drill, LiveDrill } from './api.ts';
import { useT, ErrorBox, duration, when } from './ui.tsx';
import type { MsgKey } from './i18n.ts';

const SYMBOL: Record<string, string> = { queued: '○', running: '⟳', passed: '✓', abnormal: '⚠' };

/** Seconds since `iso`, ticking each second while shown (a clock only: no request). */
function useElapsed(iso: string | null | undefined): number | null {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (!iso) return;
    const tm = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(tm);
  }, [iso]);
  return iso ? Math.max(0, (now - Date.parse(iso)) / 1000) : null;
}

function CurrentStep({ step, startedAt }: { step: string; startedAt: string }) {
  const t = useT();
  const s = useElapsed(startedAt);
  return <li data-step={step} data-current="true"><span aria-hidden="true">⟳</span> {t(`drill.step.${step}` as MsgKey)} · {t('drill.runningFor', { d: duration(s) })}</li>;
}

function DrillItem({ jobId, drill, live }: { jobId: string; drill: Drill; live: LiveDrill | null }) {
  const t = useT();
  const r = drill.report ?? {};
  // The event stream is fresher than the page's last load of the job; the report's lines come with the load.
  const state = live?.state ?? drill.state;
  const verdict = live?.verdict ?? drill.verdict;
  const current = live ? live.current : r.current ?? null;
  const messages = new Map((r.steps ?? []).map((s) => [s.step, s.message]));
  const steps = live?.steps ?? r.steps ?? [];
  const ended = state === 'passed' || state === 'abnormal';
  const total = r.startedAt && drill.endedAt ? (Date.parse(drill.endedAt) - Date.parse(r.startedAt)) / 1000 : null;
  return (
    <li data-drill={drill.id} data-drill-state={state}>
      <p><span class={`badge drill-${state}`} data-drill-badge={state}><span aria-hidden="true">{SYMBOL[state] ?? '•'}</span> {t(`drill.state.${state}` as MsgKey)}</span>
        {' '}{verdict && <b>{verdict === 'drill passed' ? t('drill.passed') : t('drill.abnormal')}</b>}
        {' '}<small>{drill.id} · {t('drill.image', { id: drill.imageId })} · {when(drill.endedAt ?? drill.requestedAt)}{total !== null ? ` · ${duration(total)}` : ''}{r.accel ? ` · ${r.accel}` : ''}</small></p>
      {(steps.length > 0 || current) && (
        <ol class="drill-steps" aria-label={t('drill.steps')}>
          {steps.map((s) => (
            <li data-step={s.step} data-ok={String(s.ok)}><span aria-hidden="true">{s.ok ? '✓' : '✗'}</span> {t(`drill.step.${s.step}` as MsgKey)} · {duration(s.seconds)}
              {' '}{s.ok ? '' : `(${t('drill.failed')})`}{messages.get(s.step) ? <small> · {messages.get(s.step)}</small> : ''}</li>
          ))}
          {!ended && current && <CurrentStep step={current.step} startedAt={current.startedAt} />}
        </ol>
      )}
      {!ended && !current && <p><small>{t(state === 'queued' ? 'drill.waitingSlot' : 'drill.starting')}</small></p>}
      {ended && r.failure && (
        <div class="drill-failure">
          <p><small>{t('drill.failedAt', { step: t(`drill.step.${r.failure.step}` as MsgKey) })}</small></p>
          <ErrorBox error={r.failure} />
          {(r.consoleTail ?? []).length > 0 && <details><summary>{t('drill.consoleTail')}</summary><pre>{r.consoleTail!.slice(-12).join('\n')}</pre></details>}
        </div>
      )}
      {ended && r.secondsToLogin ? <p>{t('drill.login', { s: r.secondsToLogin.toFixed(0) })}</p> : null}
      {ended && r.screenshot && drill.reportDir && (
        <figure class="drill-shot">
          <img src={`/v1/jobs/${encodeURIComponent(jobId)}/drills/${encodeURIComponent(drill.id)}/screenshot`} alt={t('job.screenshot', { id: drill.id })} width={480} />
          <figcaption>{t('job.screenshot', { id: drill.id })}</figcaption>
        </figure>
      )}
    </li>
  );
}

export function DrillList({ jobId, drills, live }: { jobId: string; drills: Drill[]; live: LiveDrill | null }) {
  const t = useT();
  if (drills.length === 0) return <p>{t('drill.none')}</p>;
  return <ul class="drills">{drills.map((x) => <DrillItem jobId={jobId} drill={x} live={live && live.id === x.id ? live : null} />)}</ul>;
}
