import { useContext, useEffect, useMemo, useState } from 'preact/hooks';
import { call, ApiFailure, type ApiError, type InventoryVm, type MemberResult, type Template, type Workgroup } from './api.ts';
import { LiveContext, useT, StateBadge, ErrorBox, bytes } from './ui.tsx';
import type { MsgKey } from './i18n.ts';

const asError = (e: unknown): ApiError => (e instanceof ApiFailure ? e.error : { code: 'ERROR', message: String(e) });
const BATCH = ['start', 'sync', 'pause', 'complete', 'drill'] as const;

interface WgStatus { workgroup: Workgroup; members: { jobId: string; state: string; error: string | null; drill: { state: string; verdict: string | null } | null }[] }

function WorkgroupCard({ wg, reload }: { wg: Workgroup; reload: () => void }) {
  const t = useT();
  const live = useContext(LiveContext);
  const [status, setStatus] = useState<WgStatus | null>(null);
  const [confirm, setConfirm] = useState<{ action: string; preview: MemberResult[] } | null>(null);
  const [result, setResult] = useState<MemberResult[] | null>(null);
  const [err, setErr] = useState<ApiError | null>(null);
  const [adding, setAdding] = useState<string[]>([]);
  const stamp = live?.jobs.filter((j) => j.workgroupId === wg.id).map((j) => `${j.state}:${j.drill?.state ?? ''}`).join() ?? '';
  useEffect(() => { call<WgStatus>('GET', `/v1/workgroups/${encodeURIComponent(wg.id)}`).then(setStatus, (e) => setErr(asError(e))); }, [wg.id, wg.members.join(), stamp]);
  const ask = async (action: string) => {
    try { setResult(null); setConfirm({ action, preview: await call<MemberResult[]>('POST', `/v1/workgroups/${encodeURIComponent(wg.id)}/preview`, { action }) }); } catch (e) { setErr(asError(e)); }
  };
  const run = async () => {
    const action = confirm!.action;
    setConfirm(null);
    try { setResult(await call<MemberResult[]>('POST', `/v1/workgroups/${encodeURIComponent(wg.id)}/${action}`)); } catch (e) { setErr(asError(e)); }
    reload();
  };
  const free = (live?.jobs ?? []).filter((j) => !j.workgroupId);
  const counts = new Map<string, number>();
  for (const m of status?.members ?? []) counts.set(m.state, (counts.get(m.state) ?? 0) + 1);
  const label = (a: string) => t(`action.${a}` as MsgKey);
  return (
    <article class="wg" data-workgroup={wg.id} aria-labelledby={`wg-${wg.id}`}>
      <h2 id={`wg-${wg.id}`}>{wg.name} <small>{t('wg.counts', { n: wg.members.length })}</small></h2>
      <p class="counts">{[...counts].map(([s, n]) => <span><StateBadge state={s} /> {n} </span>)}</p>
      <div class="actions" role="group" aria-label={wg.name}>{BATCH.map((a) => <button type="button" onClick={() => ask(a)}>{label(a)}</button>)}</div>
      {confirm && (
        <div class="confirm" role="dialog" aria-modal="false" aria-labelledby={`cf-${wg.id}`}>
          <h3 id={`cf-${wg.id}`}>{t('wg.confirmTitle', { action: label(confirm.action), n: confirm.preview.length })}</h3>
          {confirm.preview.some((m) => !m.ok) ? (
            <><p>{t('wg.cannot', { action: label(confirm.action) })}</p>
              <ul class="cannot">{confirm.preview.filter((m) => !m.ok).map((m) => <li data-member={m.jobId}><b>{m.jobId}</b>: {m.reason}</li>)}</ul></>
          ) : <p>{t('wg.allCan')}</p>}
          <button type="button" onClick={run}>{t('action.confirm')}</button> <button type="button" onClick={() => setConfirm(null)}>{t('action.cancel')}</button>
        </div>
      )}
      {result && <div role="status" class="result"><p>{t('action.done', { ok: result.filter((m) => m.ok).length, n: result.length })}</p>
        <ul>{result.filter((m) => !m.ok).map((m) => <li>⚠ {m.jobId}: {m.reason}</li>)}</ul></div>}
      {err && <ErrorBox error={err} />}
      <table><thead><tr><th scope="col">{t('jobs.name')}</th><th scope="col">{t('jobs.state')}</th><th scope="col">{t('job.error')}</th><th scope="col">{t('job.drills')}</th></tr></thead>
        <tbody>{(status?.members ?? []).map((m) => <tr data-member={m.jobId}><th scope="row"><a href={`#/jobs/${encodeURIComponent(m.jobId)}`}>{m.jobId}</a></th><td><StateBadge state={m.state} /></td><td>{m.error ?? ''}</td><td>{m.drill ? `${m.drill.state} ${m.drill.verdict ?? ''}` : ''}</td></tr>)}</tbody></table>
      {free.length > 0 && (
        <form onSubmit={async (e) => { e.preventDefault(); try { await call('POST', `/v1/workgroups/${encodeURIComponent(wg.id)}/add`, { jobs: adding }); setAdding([]); reload(); } catch (x) { setErr(asError(x)); } }}>
          <fieldset><legend>{t('wg.addJobs')}</legend>
            {free.map((j) => <label class="pick"><input type="checkbox" checked={adding.includes(j.id)} onChange={(e) => setAdding((e.target as HTMLInputElement).checked ? [...adding, j.id] : adding.filter((x) => x !== j.id))} /> {j.name}</label>)}
            <button type="submit" disabled={!adding.length}>{t('wg.addJobs')}</button>
          </fieldset>
        </form>
      )}
    </article>
  );
}

export function Workgroups() {
  const t = useT();
  const [list, setList] = useState<Workgroup[] | null>(null);
  const [id, setId] = useState('');
  const [err, setErr] = useState<ApiError | null>(null);
  const reload = () => call<Workgroup[]>('GET', '/v1/workgroups').then(setList, (e) => setErr(asError(e)));
  useEffect(() => { void reload(); }, []);
  return (
    <section aria-labelledby="wg-h">
      <h1 id="wg-h">{t('nav.workgroups')}</h1>
      <form class="inline" onSubmit={async (e) => { e.preventDefault(); try { await call('POST', '/v1/workgroups', { id }); setId(''); setErr(null); void reload(); } catch (x) { setErr(asError(x)); } }}>
        <label for="wg-id">{t('wg.id')}</label> <input id="wg-id" value={id} onInput={(e) => setId((e.target as HTMLInputElement).value)} required />
        <button type="submit">{t('wg.create')}</button>
      </form>
      {err && <ErrorBox error={err} />}
      {list && list.length === 0 && <p>{t('wg.none')}</p>}
      {list?.map((wg) => <WorkgroupCard wg={wg} reload={reload} />)}
    </section>
  );
}

function settingsText(s: Record<string, unknown>): string {
  return Object.entries(s).map(([k, v]) => `${k}=${String(v)}`).join(', ');
}

export function Templates() {
  const t = useT();
  const [list, setList] = useState<Template[] | null>(null);
  const [err, setErr] = useState<ApiError | null>(null);
  useEffect(() => { call<Template[]>('GET', '/v1/templates').then(setList, (e) => setErr(asError(e))); }, []);
  if (err) return <ErrorBox error={err} />;
  if (!list) return <p>{t('common.loading')}</p>;
  return (
    <section aria-labelledby="tpl-h">
      <h1 id="tpl-h">{t('nav.templates')}</h1>
      {list.length === 0 ? <p>{t('tpl.none')}</p> : (
        <table><thead><tr><th scope="col">{t('tpl.name')}</th><th scope="col">{t('tpl.settings')}</th></tr></thead>
          <tbody>{list.map((x) => <tr><th scope="row">{x.name}</th><td>{settingsText(x.settings)}</td></tr>)}</tbody></table>
      )}
    </section>
  );
}

/** A job id from a VM name: the API's ids are [A-Za-z0-9._-]. */
const jobId = (name: string) => name.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^[-.]+/, '').slice(0, 60) || 'vm';

/** Every VM folder that holds a VM, with the folders above it ("Prod" and "Prod/Web"): a choice holds its subfolders. */
function folderChoices(vms: InventoryVm[]): string[] {
  const out = new Set<string>();
  for (const v of vms) {
    const parts = (v.folder ?? '').split('/').filter(Boolean);
    for (let i = 1; i <= parts.length; i++) out.add(parts.slice(0, i).join('/'));
  }
  return [...out].sort();
}
const inFolder = (f: string | null, wanted: string) => f !== null && (f === wanted || f.startsWith(`${wanted}/`));
const folderText = (v: InventoryVm, vApp: string) => v.folder === null ? '–' : `/${v.folder}${v.vApp ? ` (${vApp} ${v.vApp})` : ''}`;

export function Inventory() {
  const t = useT();
  const [vms, setVms] = useState<InventoryVm[] | null>(null);
  const [templates, setTemplates] = useState<Template[]>([]);
  const [groups, setGroups] = useState<Workgroup[]>([]);
  const [err, setErr] = useState<ApiError | null>(null);
  const [q, setQ] = useState('');
  const [host, setHost] = useState('');
  const [ds, setDs] = useState('');
  const [folder, setFolder] = useState('');
  const [power, setPower] = useState('');
  const [cbt, setCbt] = useState('');
  const [sel, setSel] = useState<string[]>([]);
  const [tpl, setTpl] = useState('');
  const [wg, setWg] = useState('');
  const [newWg, setNewWg] = useState('');
  const [startNow, setStartNow] = useState(true);
  const [msg, setMsg] = useState('');
  const [failures, setFailures] = useState<{ vm: string; error: ApiError }[]>([]);
  useEffect(() => {
    call<InventoryVm[]>('GET', '/v1/inventory').then(setVms, (e) => setErr(asError(e)));
    call<Template[]>('GET', '/v1/templates').then(setTemplates, () => undefined);
    call<Workgroup[]>('GET', '/v1/workgroups').then(setGroups, () => undefined);
  }, []);
  const all = vms ?? [];
  const hosts = useMemo(() => [...new Set(all.map((v) => v.host).filter(Boolean))] as string[], [vms]);
  const stores = useMemo(() => [...new Set(all.flatMap((v) => v.datastores))], [vms]);
  const folders = useMemo(() => folderChoices(all), [vms]);
  const shown = all.filter((v) => (!q || v.name.toLowerCase().includes(q.toLowerCase())) && (!host || v.host === host)
    && (!folder || inFolder(v.folder, folder))
    && (!ds || v.datastores.includes(ds)) && (!power || v.powerState === power) && (!cbt || v.cbt === cbt));
  const create = async (e: Event) => {
    e.preventDefault();
    const made: string[] = [];
    const failed: { vm: string; error: ApiError }[] = [];
    for (const ref of sel) {
      const vm = all.find((v) => v.ref === ref)!;
      try {
        const id = jobId(vm.name);
        await call('POST', '/v1/jobs', { id, vm: vm.ref, start: startNow, ...(tpl ? { template: tpl } : {}) });
        made.push(id);
      } catch (x) { failed.push({ vm: vm.name, error: asError(x) }); }
    }
    let group = wg;
    if (newWg.trim() && made.length) {
      try { group = (await call<{ workgroup: Workgroup }>('POST', '/v1/workgroups', { id: newWg.trim() })).workgroup.id; setNewWg(''); } catch (x) { failed.push({ vm: newWg, error: asError(x) }); group = ''; }
    }
    if (group && made.length) await call('POST', `/v1/workgroups/${encodeURIComponent(group)}/add`, { jobs: made }).catch((x) => failed.push({ vm: group, error: asError(x) }));
    call<Workgroup[]>('GET', '/v1/workgroups').then(setGroups, () => undefined);
    setFailures(failed);
    setMsg(made.length ? t('inv.created', { ids: made.join(', ') }) : '');
    setSel([]);
  };
  const filter = (id: string, label: string, value: string, set: (v: string) => void, options: string[]) => (
    <span class="filter"><label for={id}>{label}</label> <select id={id} value={value} onChange={(e) => set((e.target as HTMLSelectElement).value)}>
      <option value="">{t('inv.any')}</option>{options.map((o) => <option value={o}>{o}</option>)}</select></span>
  );
  return (
    <section aria-labelledby="inv-h">
      <h1 id="inv-h">{t('nav.inventory')}</h1>
      {err && <ErrorBox error={err} />}
      {!vms && !err && <p>{t('inv.loading')}</p>}
      <div class="filters">
        <span class="filter"><label for="inv-q">{t('inv.search')}</label> <input id="inv-q" type="search" value={q} onInput={(e) => setQ((e.target as HTMLInputElement).value)} /></span>
        {filter('inv-host', t('inv.host'), host, setHost, hosts)}
        {filter('inv-ds', t('inv.datastore'), ds, setDs, stores)}
        {filter('inv-folder', t('inv.folder'), folder, setFolder, folders)}
        {filter('inv-power', t('inv.power'), power, setPower, ['poweredOn', 'poweredOff', 'suspended'])}
        {filter('inv-cbt', t('inv.cbt'), cbt, setCbt, ['on', 'off', 'partial'])}
      </div>
      <table class="inventory"><thead><tr><th scope="col"><span class="sr">{t('inv.selected', { n: sel.length })}</span></th><th scope="col">VM</th><th scope="col">{t('inv.power')}</th><th scope="col">{t('inv.host')}</th><th scope="col">{t('inv.datastore')}</th><th scope="col">{t('inv.folder')}</th><th scope="col">{t('inv.cbt')}</th><th scope="col">{t('inv.disks')}</th><th scope="col">{t('inv.preflight')}</th></tr></thead>
        <tbody>{shown.map((v) => (
          <tr data-vm={v.name}>
            <td><input type="checkbox" aria-label={t('inv.select', { name: v.name })} disabled={!!v.systemVm} checked={sel.includes(v.ref)}
              onChange={(e) => setSel((e.target as HTMLInputElement).checked ? [...sel, v.ref] : sel.filter((x) => x !== v.ref))} /></td>
            <th scope="row">{v.name}{v.systemVm && <small> ({t('inv.system')})</small>}</th>
            <td>{v.powerState}</td><td>{v.host ?? '–'}</td><td>{v.datastores.join(', ')}</td><td>{folderText(v, t('inv.vApp'))}</td><td>{v.cbt}</td>
            <td>{v.disks.length} · {bytes(v.disks.reduce((n, d) => n + d.capacity, 0))}</td>
            <td>{v.preflight.ok ? `✓ ${t('inv.ok')}` : <ul class="pf">{v.preflight.failed.map((f) => <li>⚠ {f.message}{f.fix && <small> — {f.fix}</small>}</li>)}</ul>}</td>
          </tr>
        ))}</tbody></table>
      <form class="create" onSubmit={create}>
        <fieldset><legend>{t('inv.selected', { n: sel.length })}</legend>
          <label for="inv-tpl">{t('inv.template')}</label> <select id="inv-tpl" value={tpl} onChange={(e) => setTpl((e.target as HTMLSelectElement).value)}>
            <option value="">{t('inv.noTemplate')}</option>{templates.map((x) => <option value={x.name}>{x.name}</option>)}</select>
          <label for="inv-wg">{t('inv.workgroup')}</label> <select id="inv-wg" value={wg} onChange={(e) => setWg((e.target as HTMLSelectElement).value)}>
            <option value="">–</option>{groups.map((x) => <option value={x.id}>{x.name}</option>)}</select>
          <label for="inv-newwg">{t('inv.newWorkgroup')}</label> <input id="inv-newwg" value={newWg} onInput={(e) => setNewWg((e.target as HTMLInputElement).value)} />
          <label><input type="checkbox" checked={startNow} onChange={(e) => setStartNow((e.target as HTMLInputElement).checked)} /> {t('inv.startNow')}</label>
          <button type="submit" disabled={!sel.length}>{t('inv.create')}</button>
        </fieldset>
      </form>
      {msg && <p role="status">✓ {msg}</p>}
      {failures.map((f) => <div><b>{f.vm}</b> <ErrorBox error={f.error} /></div>)}
    </section>
  );
}
