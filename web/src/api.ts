// The connector API the CLI uses, from the page: the session cookie rides along (HttpOnly, SameSite=Strict),
// mutating requests carry the session's CSRF token.
let csrf = '';

export interface ApiError { code: string; message: string; fix?: string }

export class ApiFailure extends Error {
  constructor(readonly status: number, readonly error: ApiError) { super(error.message); }
}

export async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET') headers['x-vmlift-csrf'] = csrf;
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'same-origin' });
  const json = await r.json().catch(() => ({})) as { error?: ApiError };
  if (!r.ok) throw new ApiFailure(r.status, json.error ?? { code: 'HTTP', message: `HTTP ${r.status}` });
  return json as T;
}

/** Log in with the API token or a one-time link code. */
export async function login(body: { token: string } | { link: string }): Promise<void> {
  const r = await call<{ csrf: string }>('POST', '/v1/session', body);
  csrf = r.csrf;
}

/** The existing session (after a reload), or false. */
export async function resume(): Promise<boolean> {
  try {
    const r = await call<{ csrf?: string }>('GET', '/v1/session');
    csrf = r.csrf ?? '';
    return true;
  } catch {
    return false;
  }
}

export async function logout(): Promise<void> {
  await call('DELETE', '/v1/session').catch(() => undefined);
  csrf = '';
}

// Shapes of the API's answers the pages read.
export interface JobError { step: string; code?: string; message: string; fix?: string; at: string; attempts: number }
export interface Settings { intervalSeconds: number; maxImages: number; compression: number; bandwidthMbps: number; checksum: boolean; quiesce: boolean; transport: string; autoSync: boolean }
export interface LiveDisk { diskKey: number; label: string; transport?: string; done: number; total: number; speed: number; remainingSeconds: number | null }
export interface Live { cycleId: string; step: string; startedAt: number; taskProgress?: number; disks: LiveDisk[] }
export interface JobRow {
  id: string; name: string; state: string; workgroupId: string | null; nextSyncAt: string | null; error: JobError | null;
  settings: Settings; running: boolean; live: Live | null; throughput: number;
  lastCycle: { kind: string; state: string; endedAt: string | null; wireBytes: number; imageId: string | null } | null;
  drill?: LiveDrill | null;
}
export interface Summary { byState: Record<string, number>; throughput: number; bytesToday: number; errors: number }
export interface JobsEvent { jobs: JobRow[]; summary: Summary }
export interface Cycle { id: string; seq: number; kind: string; state: string; startedAt: string; endedAt: string | null; sourceBytesRead: number; wireBytes: number; changedBytes: number; imageId: string | null; error: string | null; reason: string | null }
export interface Disk { diskKey: number; label: string; capacity: number; transport?: string | null; transportReason?: string | null }
export interface DrillStep { step: string; ok: boolean; seconds: number; message?: string; code?: string; fix?: string }
export interface DrillReport {
  startedAt?: string | null; steps?: DrillStep[]; current?: { step: string; startedAt: string } | null;
  failure?: { step: string; code: string; message: string; fix?: string } | null; accel?: string | null; secondsToLogin?: number | null; consoleTail?: string[]; screenshot?: boolean;
}
export interface Drill { id: string; imageId: string; state: string; verdict: string | null; requestedAt: string; endedAt: string | null; reportDir: string | null; report?: DrillReport }
export interface LiveDrill { id: string; state: string; verdict: string | null; current: { step: string; startedAt: string } | null; steps: { step: string; ok: boolean; seconds: number }[] }
export interface Image { imageId: string; committedAt?: string; disks?: { disk: number; capacity: number }[]; baseImageId?: string | null }
export interface JobDetail { job: JobRow & { sourceId: string }; disks: Disk[]; cycles: Cycle[]; live: Live | null; drills: Drill[]; images: Image[] | { error: string };
  finalSync?: { available: true; forecast: { seconds: number; changedBytes: number; throughput: number; changeRatePerHour: number } } | { available: false; reason: string } }
export interface MemberResult { jobId: string; ok: boolean; state?: string; reason?: string }
export interface Workgroup { id: string; name: string; createdAt: string; members: string[] }
export interface Template { name: string; settings: Partial<Settings>; createdAt: string }
export interface InventoryVm {
  ref: string; name: string; powerState: string; guestId: string; host: string | null; datacenter: string | null; datastores: string[];
  /** VM-folder path inside the datacenter ("Prod/Web"; "" the datacenter's vm folder) and the vApp holding the VM. */
  folder: string | null; vApp: string | null;
  cbt: string; disks: { key: number; label: string; capacity: number }[]; systemVm: string | null;
  preflight: { ok: boolean; failed: { name: string; message: string; fix?: string }[] };
}
