import { createContext } from 'preact';
import { useContext, useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { translate, type Lang, type MsgKey } from './i18n.ts';
import type { JobsEvent } from './api.ts';

export const LangContext = createContext<Lang>('en');
export const LiveContext = createContext<JobsEvent | null>(null);

export function useT(): (key: MsgKey, vars?: Record<string, string | number>) => string {
  const lang = useContext(LangContext);
  return (key, vars) => translate(lang, key, vars);
}

export function bytes(n: number): string {
  if (!Number.isFinite(n) || n <= 0) return '0 B';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  const i = Math.min(u.length - 1, Math.floor(Math.log(n) / Math.log(1024)));
  return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${u[i]}`;
}

export const rate = (n: number): string => `${bytes(n)}/s`;

export function duration(s: number | null | undefined): string {
  if (s === null || s === undefined || !Number.isFinite(s)) return '–';
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export const when = (iso: string | null | undefined): string => (iso ? new Date(iso).toLocaleString() : '–');

// State shown with a symbol and a word, not colour alone.
const SYMBOL: Record<string, string> = { created: '○', syncing: '⟳', waiting: '◷', paused: '‖', completing: '⇥', completed: '✓', error: '⚠' };

export function StateBadge({ state }: { state: string }) {
  const t = useT();
  return <span class={`badge st-${state}`} data-state={state}><span aria-hidden="true">{SYMBOL[state] ?? '•'}</span> {t(`state.${state}` as MsgKey)}</span>;
}

export function Progress({ done, total, label }: { done: number; total: number; label: string }) {
  const pct = total > 0 ? Math.min(100, Math.floor((done * 100) / total)) : 0;
  return (
    <div class="progress" role="progressbar" aria-label={label} aria-valuemin={0} aria-valuemax={100} aria-valuenow={pct}>
      <div class="bar" style={{ width: `${pct}%` }} />
      <span class="pct">{pct} %</span>
    </div>
  );
}

export function ErrorBox({ error }: { error: { code?: string; message: string; fix?: string } | null }) {
  const t = useT();
  if (!error) return null;
  return (
    <div class="error" role="alert">
      <strong>⚠ {t('job.error')}{error.code ? ` (${error.code})` : ''}:</strong> {error.message}
      {error.fix && <div class="fix"><strong>{t('job.fix')}:</strong> {error.fix}</div>}
    </div>
  );
}

/** A uPlot chart of values per cycle (x: the cycle's number). */
export function Chart({ xs, ys, label }: { xs: number[]; ys: number[]; label: string }) {
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!ref.current || xs.length === 0) return;
    const plot = new uPlot({
      width: Math.min(720, ref.current.clientWidth || 600), height: 200,
      scales: { x: { time: false, range: (_u, lo, hi) => [lo - 0.5, hi + 0.5] }, y: { range: (_u, _lo, hi) => [0, Math.max(1, hi * 1.2)] } },
      series: [{ label: '#' }, { label, stroke: '#2a6fdb', width: 2, fill: 'rgba(42,111,219,.15)', points: { show: true, size: 7 } }],
      axes: [{ label: '#', incrs: [1, 2, 5, 10, 20, 50] }, { label: 'MB/s' }],
    }, [xs, ys], ref.current);
    return () => plot.destroy();
  }, [xs.join(','), ys.join(','), label]);
  return <figure class="chart" ref={ref} aria-label={label} />;
}
