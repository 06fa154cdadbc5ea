import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { login, logout, resume, ApiFailure, type JobsEvent } from './api.ts';
import { LANGS, translate, type Lang } from './i18n.ts';
import { LangContext, LiveContext, useT } from './ui.tsx';
import { Overview, Jobs, JobPage } from './pages.tsx';
import { Workgroups, Templates, Inventory } from './more.tsx';
import './style.css';

type Conn = 'connecting' | 'live' | 'lost' | 'reconnected';

/** The language chosen before, else the browser's. */
function initialLang(): Lang {
  const saved = localStorage.getItem('vmlift.lang');
  if (saved && saved in LANGS) return saved as Lang;
  const nav = navigator.language.toLowerCase();
  return nav.startsWith('ja') ? 'ja' : nav.startsWith('zh') ? 'zh' : 'en';
}

function useHash(): string {
  const [h, setH] = useState(location.hash);
  useEffect(() => {
    const on = () => setH(location.hash);
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return h;
}

/** Follows GET /v1/events; after a lost connection (a connector restart) it reconnects and says so. */
function useLive(enabled: boolean, onUnauthorized: () => void): [JobsEvent | null, Conn] {
  const [ev, setEv] = useState<JobsEvent | null>(null);
  const [conn, setConn] = useState<Conn>('connecting');
  useEffect(() => {
    if (!enabled) return;
    let es: EventSource | undefined;
    let lost = false;
    let stopped = false;
    let timer: number | undefined;
    const open = () => {
      es = new EventSource('/v1/events');
      es.addEventListener('jobs', (m) => {
        setEv(JSON.parse((m as MessageEvent<string>).data) as JobsEvent);
        if (lost) { lost = false; setConn('reconnected'); clearTimeout(timer); timer = window.setTimeout(() => setConn('live'), 8000); }
        else setConn((c) => (c === 'reconnected' ? c : 'live'));
      });
      es.onerror = () => {
        lost = true;
        setConn('lost');
        if (es!.readyState === EventSource.CLOSED) {
          // The browser gave up (e.g. a 401 once the connector is back with another token): check the session, retry.
          es!.close();
          window.setTimeout(async () => {
            if (stopped) return;
            if (await resume()) open(); else onUnauthorized();
          }, 1500);
        }
      };
    };
    open();
    return () => { stopped = true; es?.close(); clearTimeout(timer); };
  }, [enabled]);
  return [ev, conn];
}

function Login({ onDone }: { onDone: () => void }) {
  const t = useT();
  const [token, setToken] = useState('');
  const [err, setErr] = useState('');
  const submit = async (e: Event) => {
    e.preventDefault();
    try { await login({ token: token.trim() }); onDone(); } catch (x) {
      setErr(x instanceof ApiFailure ? `${x.error.message}${x.error.fix ? ` — ${x.error.fix}` : ''}` : String(x));
    }
  };
  return (
    <main class="login">
      <h1>{t('login.title')}</h1>
      <form onSubmit={submit}>
        <label for="token">{t('login.token')}</label>
        <input id="token" name="token" type="password" autocomplete="current-password" value={token} onInput={(e) => setToken((e.target as HTMLInputElement).value)} required />
        <p class="hint">{t('login.hint')}</p>
        <button type="submit">{t('login.submit')}</button>
        {err && <p class="error" role="alert">{t('login.failed')}: {err}</p>}
      </form>
    </main>
  );
}

function App() {
  const [lang, setLang] = useState<Lang>(initialLang());
  const [authed, setAuthed] = useState<boolean | null>(null);
  const hash = useHash();
  useEffect(() => {
    document.documentElement.lang = lang === 'zh' ? 'zh-CN' : lang;
    document.title = translate(lang, 'app.title');
    localStorage.setItem('vmlift.lang', lang);
  }, [lang]);
  useEffect(() => {
    (async () => {
      const link = /^#link=([A-Za-z0-9_-]+)/.exec(location.hash)?.[1];
      if (link) {
        history.replaceState(null, '', location.pathname);
        try { await login({ link }); setAuthed(true); return; } catch { /* fall through to the session check */ }
      }
      setAuthed(await resume());
    })();
  }, []);
  const [live, conn] = useLive(authed === true, () => setAuthed(false));
  const t = (k: Parameters<typeof translate>[1], v?: Record<string, string | number>) => translate(lang, k, v);

  if (authed === null) return <p>{t('common.loading')}</p>;
  const langPicker = (
    <label class="lang">{t('nav.language')}{' '}
      <select aria-label={t('nav.language')} value={lang} onChange={(e) => setLang((e.target as HTMLSelectElement).value as Lang)}>
        {Object.entries(LANGS).map(([k, v]) => <option value={k}>{v}</option>)}
      </select>
    </label>
  );
  if (!authed) return <LangContext.Provider value={lang}>{langPicker}<Login onDone={() => setAuthed(true)} /></LangContext.Provider>;

  const route = hash.replace(/^#\/?/, '').split('/');
  const page = route[0] || 'overview';
  const nav = ['overview', 'jobs', 'workgroups', 'templates', 'inventory'] as const;
  let body;
  if (page === 'jobs' && route[1]) body = <JobPage id={decodeURIComponent(route[1])} />;
  else if (page === 'jobs') body = <Jobs />;
  else if (page === 'workgroups') body = <Workgroups />;
  else if (page === 'templates') body = <Templates />;
  else if (page === 'inventory') body = <Inventory />;
  else body = <Overview />;
  return (
    <LangContext.Provider value={lang}>
      <LiveContext.Provider value={live}>
        <header>
          <strong class="brand">{t('app.title')}</strong>
          <nav aria-label="main">
            {nav.map((n) => <a href={`#/${n}`} aria-current={page === n ? 'page' : undefined}>{t(`nav.${n}`)}</a>)}
          </nav>
          <span class={`conn conn-${conn}`} role="status" aria-live="polite" data-conn={conn}>
            {conn === 'lost' ? `⚠ ${t('live.reconnecting')}` : conn === 'reconnected' ? `✓ ${t('live.reconnected')}` : conn === 'live' ? `● ${t('live.connected')}` : t('common.loading')}
          </span>
          {langPicker}
          <button type="button" onClick={async () => { await logout(); setAuthed(false); }}>{t('nav.logout')}</button>
        </header>
        <main id="main">{body}</main>
      </LiveContext.Provider>
    </LangContext.Provider>
  );
}

render(<App />, document.getElementById('app')!);
