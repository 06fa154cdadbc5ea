import { useEffect, useState } from 'preact/hooks';
import { call, type ApiError } from './api.ts';
import { useT, bytes } from './ui.tsx';

// GET /v1/receivers of the connector API (the same answer `vmlift connector receivers --json` prints).
interface StoreFigures { freeBytes: number; totalBytes: number; storedBytes: number; distinctBytes: number; logicalBytes: number; dedupRatio: number; images: number; computedAt: string }
type Receiver = { address: string; reachable: true; figures: StoreFigures } | { address: string; reachable: false; error: ApiError };

/** How often the overview asks again (the receiver keeps its totals up to 60 s; free space is read each time). */
const POLL_MS = 30_000;

/** The overview's receiver card: free space as a bar and as text, the dedup ratio, or why a receiver did not answer. */
export function ReceiverCard() {
  const t = useT();
  const [list, setList] = useState<Receiver[] | null>(null);
  const [failed, setFailed] = useState<ApiError | null>(null);
  useEffect(() => {
    let live = true;
    const load = () => call<{ receivers: Receiver[] }>('GET', '/v1/receivers').then(
      (r) => { if (live) { setList(r.receivers); setFailed(null); } },
      (e: unknown) => { if (live) setFailed((e as { error?: ApiError }).error ?? { code: 'HTTP', message: String(e) }); });
    load();
    const timer = setInterval(load, POLL_MS);
    return () => { live = false; clearInterval(timer); };
  }, []);
  return (
    <div class="card" data-testid="receivers"><h2>{t('overview.receiver')}</h2>
      {failed ? <Unreachable error={failed} /> : !list ? <p>{t('common.loading')}</p> : list.length === 0 ? <p>{t('overview.noReceiver')}</p>
        : list.map((r) => (
          <div class="receiver" data-receiver={r.address} data-reachable={String(r.reachable)}>
            <h3>{r.address}</h3>
            {r.reachable ? <Figures address={r.address} f={r.figures} /> : <Unreachable error={r.error} />}
          </div>
        ))}
    </div>
  );
}

function Figures({ address, f }: { address: string; f: StoreFigures }) {
  const t = useT();
  const pct = f.totalBytes > 0 ? Math.floor((f.freeBytes * 100) / f.totalBytes) : 0;
  return (
    <>
      <div class="progress space" role="meter" aria-label={t('overview.freeBar', { address })} aria-valuemin={0} aria-valuemax={100} aria-valuenow={pct}>
        <div class="bar" style={{ width: `${pct}%` }} />
      </div>
      <p data-testid="free">{t('overview.free', { free: bytes(f.freeBytes), total: bytes(f.totalBytes), pct })}</p>
      <p class="big" data-testid="dedup">{t('overview.dedup', { ratio: f.dedupRatio.toFixed(1) })}</p>
      <p data-testid="stored">{t('overview.stored', { logical: bytes(f.logicalBytes), n: f.images, stored: bytes(f.distinctBytes) })}</p>
    </>
  );
}

function Unreachable({ error }: { error: ApiError }) {
  const t = useT();
  return (
    <div class="error" role="alert" data-testid="unreachable">
      <strong>⚠ {t('overview.unreachable')} ({error.code}):</strong> {error.message}
      {error.fix && <div class="fix"><strong>{t('job.fix')}:</strong> {error.fix}</div>}
    </div>
  );
}
