import { useContext, useEffect, useState } from 'preact/hooks';
import { call, ApiFailure, type JobDetail, type JobRow, type ApiError } from './api.ts';
import { LiveContext, useT, StateBadge, Progress, ErrorBox, Chart, bytes, rate, duration, when } from './ui.tsx';
import type { MsgKey } from './i18n.ts';
import { ReceiverCard } from './receivers.tsx';
import { DrillList } from './drills.tsx';

export function Overview() {
  const t = useT();
  const live = useContext(LiveContext);
  if (!live) return <p>{t('common.loading')}</p>;
  const s = live.summary;
  const failing = live.jobs.filter((j) => j.state === 'error' || (j.error && j.state !== 'completed'));
  return (
    <section aria-labelledby="ov-h">
      <h1 id="ov-h">{t('nav.overview')}</h1>
      <div class="cards">
        <div class="card"><h2>{t('overview.byState')}</h2>
          <ul class="states">{Object.entries(s.byState).map(([k, n]) => <li data-state={k}><StateBadge state={k} />: <b>{n}</b></li>)}</ul>
        </div>
        <div class="card"><h2>{t('overview.throughput')}</h2><p class="big" data-testid="throughput">{rate(s.throughput)}</p></div>
        <div class="card"><h2>{t('overview.bytesToday')}</h2><p class="big" data-testid="bytes-today">{bytes(s.bytesToday)}</p></div>
        <ReceiverCard />
      </div>
      <h2>{t('overview.errors')} ({s.errors})</h2>
      {failing.length === 0 ? <p>{t('overview.noErrors')}</p> : (
        <ul class="errors">{failing.map((j) => <li><a href={`#/jobs/${encodeURIComponent(j.id)}`}>{j.name}</a> <ErrorBox error={j.error} /></li>)}</ul>
      )}
    </section>
  );
}

function totals(j: JobRow): { done: number; total: number; speed: number; remaining: number | null } {
  const d = j.live?.disks ?? [];
  const done = d.reduce((n, x) => n + x.done, 0), total = d.reduce((n, x) => n + x.total, 0);
  const speed = j.throughput;
  return { done, total, speed, remaining: speed > 0 ? (total - done) / speed : null };
}

export function Jobs() {
  const t = useT();
  const live = useContext(LiveContext);
  if (!live) return <p>{t('common.loading')}</p>;
  return (
    <section aria-labelledby="jobs-h">
      <h1 id="jobs-h">{t('nav.jobs')}</h1>
      {live.jobs.length === 0 ? <p>{t('jobs.none')}</p> : (
        <table class="jobs">
          <thead><tr>
            <th scope="col">{t('jobs.name')}</th><th scope="col">{t('jobs.state')}</th><th scope="col">{t('jobs.progress')}</th>
            <th scope="col">{t('jobs.speed')}</th><th scope="col">{t('jobs.remaining')}</th><th scope="col">{t('jobs.nextSync')}</th><th scope="col">{t('jobs.lastCycle')}</th>
          </tr></thead>
          <tbody>{live.jobs.map((j) => {
            const x = totals(j);
            return (
              <tr data-job={j.id}>
                <th scope="row"><a href={`#/jobs/${encodeURIComponent(j.id)}`}>{j.name}</a>{j.name !== j.id && <small> ({j.id})</small>}</th>
                <td><StateBadge state={j.state} />{j.live && <small> · {j.live.step}</small>}</td>
                <td>{j.live?.disks.length ? j.live.disks.map((d) => <Progress done={d.done} total={d.total} label={`${j.name} ${d.label || d.diskKey}`} />) : '–'}</td>
                <td data-testid="speed">{j.live ? rate(x.speed) : '–'}</td>
                <td>{j.live ? duration(x.remaining) : '–'}</td>
                <td>{when(j.nextSyncAt)}</td>
                <td>{j.lastCycle ? `${j.lastCycle.kind} ${j.lastCycle.state} · ${when(j.lastCycle.endedAt)} · ${bytes(j.lastCycle.wireBytes)}` : '–'}</td>
              </tr>
            );
          })}</tbody>
        </table>
      )}
    </section>
  );
}

export function JobActions({ id, state, onDone }: { id: string; state: string; onDone: (e: ApiError | null) => void }) {
  const t = useT();
  const act = async (a: string) => {
    try { await call('POST', `/v1/jobs/${encodeURIComponent(id)}/${a}`); onDone(null); } catch (e) {
      onDone(e instanceof ApiFailure ? e.error : { code: 'ERROR', message: String(e) });
    }
  };
  const actions: string[] = state === 'created' ? ['start'] : state === 'paused' ? ['resume', 'complete'] : state === 'completed' ? []
    : state === 'error' ? ['pause', 'complete'] : ['sync', 'pause', 'complete'];
  return <div class="actions">{actions.map((a) => <button type="button" onClick={() => act(a)}>{t(`action.${a}` as MsgKey)}</button>)}</div>;
}

export function JobPage({ id }: { id: string }) {
  const t = useT();
  const live = useContext(LiveContext);
  const [d, setD] = useState<JobDetail | null>(null);
  const [err, setErr] = useState<ApiError | null>(null);
  const [note, setNote] = useState('');
  const row = live?.jobs.find((j) => j.id === id);
  const load = () => call<JobDetail>('GET', `/v1/jobs/${encodeURIComponent(id)}`).then(setD, (e) => setErr(e instanceof ApiFailure ? e.error : { code: 'ERROR', message: String(e) }));
  // Reload when the job's state, its last cycle, error or newest drill (state, step, steps done, verdict) change: the live event tells.
  const dr = row?.drill;
  const key = row ? `${row.state}|${row.lastCycle?.endedAt}|${row.error?.at}|${row.running}|${dr ? `${dr.id}|${dr.state}|${dr.current?.step}|${dr.steps.length}|${dr.verdict}` : ''}` : '';
  useEffect(() => { void load(); }, [id, key]);
  if (!d) return err ? <ErrorBox error={err} /> : <p>{t('common.loading')}</p>;
  const job = { ...d.job, ...(row ?? {}) };
  const liveNow = row?.live ?? d.live;
  const committed = d.cycles.filter((c) => c.state === 'committed' && c.endedAt).reverse();
  const secs = (c: typeof d.cycles[number]) => Math.max(0.001, (Date.parse(c.endedAt!) - Date.parse(c.startedAt)) / 1000);
  const images = Array.isArray(d.images) ? d.images : [];
  const done = (e: ApiError | null) => { setErr(e); void load(); };
  return (
    <section aria-labelledby="job-h">
      <p><a href="#/jobs">← {t('common.back')}</a></p>
      <h1 id="job-h">{job.name} <StateBadge state={job.state} /></h1>
      <JobActions id={id} state={job.state} onDone={done} />
      {err && <ErrorBox error={err} />}
      {job.error && (
        <div class="job-error">
          <ErrorBox error={job.error} />
          <p><small>{job.error.step} · {when(job.error.at)} · ×{job.error.attempts}</small></p>
          <button type="button" onClick={async () => { try { await call('POST', `/v1/jobs/${encodeURIComponent(id)}/start`); done(null); } catch (e) { done(e instanceof ApiFailure ? e.error : null); } }}>{t('job.retry')}</button>
        </div>
      )}
      {liveNow && (
        <div class="live-now">
          <p>{liveNow.step}{liveNow.taskProgress !== undefined ? ` ${liveNow.taskProgress} %` : ''} · {t('jobs.speed')}: <span data-testid="job-speed">{rate(row?.throughput ?? 0)}</span></p>
          {liveNow.disks.map((x) => <div class="disk-progress"><span>{x.label || x.diskKey}{x.transport ? ` (${x.transport})` : ''}</span><Progress done={x.done} total={x.total} label={x.label || String(x.diskKey)} /></div>)}
        </div>
      )}
      {job.state !== 'completed' && <Settings id={id} settings={job.settings} onSaved={(m) => { setNote(m); void load(); }} />}
      {note && <p role="status">✓ {note}</p>}

      <h2>{t('job.disks')}</h2>
      {d.disks.length === 0 ? <p>{t('common.none')}</p> : (
        <table><thead><tr><th scope="col">key</th><th scope="col">label</th><th scope="col">{t('job.capacity')}</th><th scope="col">{t('job.transport')}</th></tr></thead>
          <tbody>{d.disks.map((x) => <tr><td>{x.diskKey}</td><td>{x.label}</td><td>{bytes(x.capacity)}</td><td>{x.transport ?? '–'}{x.transportReason ? ` (${x.transportReason})` : ''}</td></tr>)}</tbody></table>
      )}

      <h2>{t('job.cycles')}</h2>
      {committed.length > 0 && <Chart label={t('job.chart')} xs={committed.map((c) => c.seq)} ys={committed.map((c) => +(c.wireBytes / secs(c) / 1e6).toFixed(2))} />}
      <table class="cycles"><thead><tr><th scope="col">#</th><th scope="col">{t('job.kind')}</th><th scope="col">{t('jobs.state')}</th><th scope="col">{t('job.changed')}</th><th scope="col">{t('job.read')}</th><th scope="col">{t('job.sent')}</th><th scope="col">{t('job.duration')}</th></tr></thead>
        <tbody>{d.cycles.map((c) => <tr data-cycle={c.state}><td>{c.seq}</td><td>{c.kind}</td><td>{c.state}</td><td>{bytes(c.changedBytes)}</td><td>{bytes(c.sourceBytesRead)}</td><td>{bytes(c.wireBytes)}</td><td>{c.endedAt ? duration(secs(c)) : '…'}</td></tr>)}</tbody></table>

      <h2>{t('job.images')}</h2>
      <p>{t('job.retention', { n: job.settings.maxImages })}</p>
      {!Array.isArray(d.images) && <ErrorBox error={{ message: d.images.error }} />}
      <ul class="images">{images.map((im) => (
        <li data-image={im.imageId}><code>{im.imageId}</code> {when(im.committedAt)}
          {(im.disks ?? []).map((x) => <div><small>{t('job.export')} (disk {x.disk}, {bytes(x.capacity)}):</small> <code>vmlift image export --source {d.job.sourceId} --image {im.imageId} --disk {x.disk} --format qcow2 --output disk{x.disk}.qcow2</code></div>)}</li>
      ))}</ul>

      <h2>{t('job.finalSync')}</h2>
      <p data-forecast>{!d.finalSync ? '' : d.finalSync.available
        ? t('job.forecast', { s: d.finalSync.forecast.seconds.toFixed(1), changed: bytes(d.finalSync.forecast.changedBytes), rate: bytes(d.finalSync.forecast.throughput), hourly: bytes(d.finalSync.forecast.changeRatePerHour) })
        : t('job.noForecast', { reason: d.finalSync.reason })}</p>

      <h2>{t('job.drills')}</h2>
      <button type="button" disabled={images.length === 0} onClick={async () => { try { await call('POST', `/v1/jobs/${encodeURIComponent(id)}/drill`, {}); done(null); } catch (e) { done(e instanceof ApiFailure ? e.error : null); } }}>{t('job.drill')}</button>
      {images.length === 0 && <p><small>{t('drill.noImage')}</small></p>}
      <DrillList jobId={id} drills={d.drills} live={row?.drill ?? null} />
    </section>
  );
}

function Settings({ id, settings, onSaved }: { id: string; settings: JobRow['settings']; onSaved: (m: string) => void }) {
  const t = useT();
  const [bw, setBw] = useState(String(settings.bandwidthMbps));
  const [comp, setComp] = useState(String(settings.compression));
  const [sum, setSum] = useState(settings.checksum);
  const [err, setErr] = useState<ApiError | null>(null);
  const save = async (e: Event) => {
    e.preventDefault();
    try {
      await call('PATCH', `/v1/jobs/${encodeURIComponent(id)}/settings`, { bandwidth: Number(bw), compression: Number(comp), checksum: sum });
      setErr(null);
      onSaved(t('job.saved'));
    } catch (x) { setErr(x instanceof ApiFailure ? x.error : { code: 'ERROR', message: String(x) }); }
  };
  return (
    <form class="settings" onSubmit={save}>
      <fieldset><legend>{t('job.settings')}</legend>
        <label for="bw">{t('job.bandwidth')}</label> <input id="bw" type="number" min={0} value={bw} onInput={(e) => setBw((e.target as HTMLInputElement).value)} />
        <label for="comp">{t('job.compression')}</label> <input id="comp" type="number" min={0} max={10} value={comp} onInput={(e) => setComp((e.target as HTMLInputElement).value)} />
        <label><input type="checkbox" checked={sum} onChange={(e) => setSum((e.target as HTMLInputElement).checked)} /> {t('job.checksum')}</label>
        <button type="submit">{t('job.save')}</button>
      </fieldset>
      {err && <ErrorBox error={err} />}
    </form>
  );
}
