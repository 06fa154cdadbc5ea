/**
 * The connector's durable state in SQLite (WAL, synchronous=FULL): jobs, their disks (changeIds),
 * cycles, workgroups and templates; the schema and its version; rows to records and back. It
 * implements StateStore (state/types.ts), the only way the engine reaches it.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import {
  StateError, WORKGROUP_MAX_MEMBERS, WORKGROUPS_MAX,
  type CycleRecord, type DiskRecord, type JobRecord, type JobSettings, type NewJob, type StateStore,
  type TemplateRecord, type WorkgroupRecord, type DrillRecord,
} from './types.ts';
import { StateNoSpaceError, isStateFull, withNoSpaceErrors } from './no-space.ts';

const SCHEMA_VERSION = 4;

const NO_JOB_FIX = 'list jobs with `vmlift job ls`';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, vm_ref TEXT, source_id TEXT NOT NULL,
  settings TEXT NOT NULL, state TEXT NOT NULL, resume_state TEXT, error TEXT, workgroup_id TEXT,
  next_sync_at TEXT, sync_requested INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '', disk_selection TEXT
);
CREATE TABLE IF NOT EXISTS disks (
  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, disk_key INTEGER NOT NULL,
  label TEXT NOT NULL, capacity INTEGER NOT NULL, change_id TEXT, transport TEXT, transport_reason TEXT,
  PRIMARY KEY (job_id, disk_key)
);
CREATE TABLE IF NOT EXISTS cycles (
  id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, seq INTEGER NOT NULL,
  kind TEXT NOT NULL, state TEXT NOT NULL, reason TEXT, snapshot_name TEXT, image_id TEXT,
  started_at TEXT NOT NULL, ended_at TEXT, source_bytes_read INTEGER NOT NULL DEFAULT 0,
  wire_bytes INTEGER NOT NULL DEFAULT 0, changed_bytes INTEGER NOT NULL DEFAULT 0, error TEXT,
  snapshot_at TEXT, data_ms INTEGER,
  UNIQUE (job_id, seq)
);
CREATE TABLE IF NOT EXISTS workgroups (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL, description TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS templates (name TEXT PRIMARY KEY, settings TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS drills (
  id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, image_id TEXT NOT NULL,
  state TEXT NOT NULL, verdict TEXT, requested_at TEXT NOT NULL, ended_at TEXT, report TEXT NOT NULL, report_dir TEXT
);
`;

interface JobRow {
  id: string; name: string; kind: string; vm_ref: string | null; source_id: string; settings: string;
  state: string; resume_state: string | null; error: string | null; workgroup_id: string | null;
  next_sync_at: string | null; sync_requested: number; created_at: string; updated_at: string;
  description: string; disk_selection: string | null;
}
interface CycleRow {
  id: string; job_id: string; seq: number; kind: string; state: string; reason: string | null;
  snapshot_name: string | null; image_id: string | null; started_at: string; ended_at: string | null;
  source_bytes_read: number; wire_bytes: number; changed_bytes: number; error: string | null;
  snapshot_at: string | null; data_ms: number | null;
}

interface DrillRow {
  id: string; job_id: string; image_id: string; state: string; verdict: string | null; requested_at: string;
  ended_at: string | null; report: string; report_dir: string | null;
}

function drillFromRow(r: DrillRow): DrillRecord {
  return {
    id: r.id, jobId: r.job_id, imageId: r.image_id, state: r.state, verdict: r.verdict, requestedAt: r.requested_at,
    endedAt: r.ended_at, report: JSON.parse(r.report) as Record<string, unknown>, reportDir: r.report_dir,
  };
}

const now = (): string => new Date().toISOString();

function jobFromRow(r: JobRow): JobRecord {
  return {
    id: r.id, name: r.name, description: r.description ?? '', disks: r.disk_selection ? JSON.parse(r.disk_selection) : null,
    kind: r.kind as JobRecord['kind'], vmRef: r.vm_ref, sourceId: r.source_id,
    settings: JSON.parse(r.settings) as JobSettings, state: r.state as JobRecord['state'],
    resumeState: r.resume_state as JobRecord['resumeState'], error: r.error ? JSON.parse(r.error) : null,
    workgroupId: r.workgroup_id, nextSyncAt: r.next_sync_at, syncRequested: r.sync_requested === 1,
    createdAt: r.created_at, updatedAt: r.updated_at,
  };
}

function cycleFromRow(r: CycleRow): CycleRecord {
  return {
    id: r.id, jobId: r.job_id, seq: r.seq, kind: r.kind as CycleRecord['kind'], state: r.state as CycleRecord['state'],
    reason: r.reason, snapshotName: r.snapshot_name, imageId: r.image_id, startedAt: r.started_at, endedAt: r.ended_at,
    sourceBytesRead: r.source_bytes_read, wireBytes: r.wire_bytes, changedBytes: r.changed_bytes, error: r.error,
    snapshotAt: r.snapshot_at, dataMs: r.data_ms,
  };
}

/** SQLite (WAL, synchronous=FULL so a committed transaction survives power loss) state store. */
export class SqliteStateStore implements StateStore {
  private readonly db: Database.Database;

  constructor(readonly path: string) {
    mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    try {
      this.prepareSchema();
    } catch (e) {
      this.db.close();
      throw e;
    }
  }

  private prepareSchema(): void {
    const path = this.path;
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    const version = this.db.pragma('user_version', { simple: true }) as number;
    if (version > SCHEMA_VERSION) {
      throw new StateError('SCHEMA_NEWER', `state database ${path} was written by a newer vmlift (schema ${version} > ${SCHEMA_VERSION}); upgrade vmlift`,
        { fix: 'run the vmlift version that wrote it, or a newer one' });
    }
    // an up-to-date database is opened without a write, so that a full state folder stays readable
    if (version < SCHEMA_VERSION) this.db.transaction(() => {
      this.db.exec(SCHEMA);
      // Schema 2 → 3: the drills table (made by SCHEMA above). Schema 1 → 2: the disks' transport and its reason.
      const cols = new Set((this.db.prepare('PRAGMA table_info(disks)').all() as { name: string }[]).map((c) => c.name));
      if (!cols.has('transport')) this.db.exec('ALTER TABLE disks ADD COLUMN transport TEXT; ALTER TABLE disks ADD COLUMN transport_reason TEXT;');
      // Schema 3 → 4: job and workgroup descriptions, the job's disk selection; when each cycle's snapshot
      // was taken and how long it moved data (the final-sync forecast).
      addColumns(this.db, 'jobs', { description: "TEXT NOT NULL DEFAULT ''", disk_selection: 'TEXT' });
      addColumns(this.db, 'workgroups', { description: "TEXT NOT NULL DEFAULT ''" });
      addColumns(this.db, 'cycles', { snapshot_at: 'TEXT', data_ms: 'INTEGER' });
      this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
    })();
  }

  createJob(job: NewJob): JobRecord {
    const t = now();
    try {
      this.db.prepare(`INSERT INTO jobs (id, name, kind, vm_ref, source_id, settings, state, created_at, updated_at, description, disk_selection)
        VALUES (?, ?, ?, ?, ?, ?, 'created', ?, ?, ?, ?)`).run(job.id, job.name, job.kind, job.vmRef, job.sourceId, JSON.stringify(job.settings), t, t,
        job.description ?? '', job.disks ? JSON.stringify(job.disks) : null);
    } catch (e) {
      if ((e as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') throw new StateError('JOB_EXISTS', `job ${job.id} already exists`, { fix: 'choose another job id, or delete the old job first (`vmlift job delete`)' });
      throw e;
    }
    return this.mustJob(job.id);
  }

  getJob(id: string): JobRecord | undefined {
    const r = this.db.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as JobRow | undefined;
    return r ? jobFromRow(r) : undefined;
  }

  listJobs(): JobRecord[] {
    return (this.db.prepare('SELECT * FROM jobs ORDER BY created_at, id').all() as JobRow[]).map(jobFromRow);
  }

  updateJob(id: string, patch: Partial<Omit<JobRecord, 'id' | 'createdAt'>>): JobRecord {
    const cols: Record<string, unknown> = {};
    if (patch.name !== undefined) cols.name = patch.name;
    if (patch.description !== undefined) cols.description = patch.description;
    if (patch.disks !== undefined) cols.disk_selection = patch.disks === null ? null : JSON.stringify(patch.disks);
    if (patch.kind !== undefined) cols.kind = patch.kind;
    if (patch.vmRef !== undefined) cols.vm_ref = patch.vmRef;
    if (patch.sourceId !== undefined) cols.source_id = patch.sourceId;
    if (patch.settings !== undefined) cols.settings = JSON.stringify(patch.settings);
    if (patch.state !== undefined) cols.state = patch.state;
    if (patch.resumeState !== undefined) cols.resume_state = patch.resumeState;
    if (patch.error !== undefined) cols.error = patch.error === null ? null : JSON.stringify(patch.error);
    if (patch.workgroupId !== undefined) cols.workgroup_id = patch.workgroupId;
    if (patch.nextSyncAt !== undefined) cols.next_sync_at = patch.nextSyncAt;
    if (patch.syncRequested !== undefined) cols.sync_requested = patch.syncRequested ? 1 : 0;
    cols.updated_at = now();
    const names = Object.keys(cols);
    const info = this.db.prepare(`UPDATE jobs SET ${names.map((n) => `${n} = @${n}`).join(', ')} WHERE id = @id`).run({ ...cols, id });
    if (info.changes === 0) throw new StateError('NO_JOB', `no job ${id}`, { fix: NO_JOB_FIX });
    return this.mustJob(id);
  }

  deleteJob(id: string): void {
    this.db.prepare('DELETE FROM jobs WHERE id = ?').run(id);
  }

  setDisks(jobId: string, disks: Omit<DiskRecord, 'jobId'>[]): void {
    const upsert = this.db.prepare(`INSERT INTO disks (job_id, disk_key, label, capacity, change_id, transport, transport_reason) VALUES (?, ?, ?, ?, ?, ?, ?)
      ON CONFLICT (job_id, disk_key) DO UPDATE SET label = excluded.label, capacity = excluded.capacity,
        transport = COALESCE(excluded.transport, disks.transport), transport_reason = COALESCE(excluded.transport_reason, disks.transport_reason)`);
    const keys = new Set(disks.map((d) => d.diskKey));
    this.db.transaction(() => {
      for (const d of disks) upsert.run(jobId, d.diskKey, d.label, d.capacity, d.changeId, d.transport ?? null, d.transportReason ?? null);
      for (const old of this.getDisks(jobId)) {
        if (!keys.has(old.diskKey)) this.db.prepare('DELETE FROM disks WHERE job_id = ? AND disk_key = ?').run(jobId, old.diskKey);
      }
    })();
  }

  getDisks(jobId: string): DiskRecord[] {
    const rows = this.db.prepare('SELECT * FROM disks WHERE job_id = ? ORDER BY disk_key').all(jobId) as
      { job_id: string; disk_key: number; label: string; capacity: number; change_id: string | null; transport: string | null; transport_reason: string | null }[];
    return rows.map((r) => ({
      jobId: r.job_id, diskKey: r.disk_key, label: r.label, capacity: r.capacity, changeId: r.change_id,
      transport: r.transport, transportReason: r.transport_reason,
    }));
  }

  startCycle(c: Pick<CycleRecord, 'id' | 'jobId' | 'kind' | 'reason' | 'snapshotName'>): CycleRecord {
    this.db.transaction(() => {
      const { seq } = this.db.prepare('SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM cycles WHERE job_id = ?').get(c.jobId) as { seq: number };
      this.db.prepare(`INSERT INTO cycles (id, job_id, seq, kind, state, reason, snapshot_name, started_at)
        VALUES (?, ?, ?, ?, 'running', ?, ?, ?)`).run(c.id, c.jobId, seq, c.kind, c.reason, c.snapshotName, now());
    })();
    return this.mustCycle(c.id);
  }

  updateCycle(id: string, patch: Partial<Pick<CycleRecord, 'sourceBytesRead' | 'wireBytes' | 'changedBytes' | 'snapshotName' | 'kind' | 'reason' | 'snapshotAt' | 'dataMs'>>): void {
    const c = this.mustCycle(id);
    this.db.prepare(`UPDATE cycles SET source_bytes_read = ?, wire_bytes = ?, changed_bytes = ?, snapshot_name = ?, kind = ?, reason = ?, snapshot_at = ?, data_ms = ? WHERE id = ?`)
      .run(patch.sourceBytesRead ?? c.sourceBytesRead, patch.wireBytes ?? c.wireBytes, patch.changedBytes ?? c.changedBytes,
        patch.snapshotName ?? c.snapshotName, patch.kind ?? c.kind, patch.reason ?? c.reason, patch.snapshotAt ?? c.snapshotAt ?? null, patch.dataMs ?? c.dataMs ?? null, id);
  }

  commitCycle(id: string, imageId: string, changeIds: { diskKey: number; changeId: string | null }[]): CycleRecord {
    this.db.transaction(() => {
      const c = this.mustCycle(id);
      if (c.state !== 'running') throw new StateError('CYCLE_NOT_RUNNING', `cycle ${id} is ${c.state}, not running`);
      this.db.prepare(`UPDATE cycles SET state = 'committed', image_id = ?, ended_at = ? WHERE id = ?`).run(imageId, now(), id);
      const set = this.db.prepare('UPDATE disks SET change_id = ? WHERE job_id = ? AND disk_key = ?');
      for (const d of changeIds) {
        if (set.run(d.changeId, c.jobId, d.diskKey).changes === 0) {
          throw new StateError('NO_DISK', `job ${c.jobId} has no disk ${d.diskKey}`);
        }
      }
    })();
    return this.mustCycle(id);
  }

  failCycle(id: string, error: string): CycleRecord {
    this.db.prepare(`UPDATE cycles SET state = 'failed', error = ?, ended_at = ? WHERE id = ? AND state = 'running'`).run(error, now(), id);
    return this.mustCycle(id);
  }

  listCycles(jobId: string, limit = 20): CycleRecord[] {
    return (this.db.prepare('SELECT * FROM cycles WHERE job_id = ? ORDER BY seq DESC LIMIT ?').all(jobId, limit) as CycleRow[]).map(cycleFromRow);
  }

  addDrill(d: Omit<DrillRecord, 'endedAt' | 'verdict' | 'reportDir'>): DrillRecord {
    this.db.prepare(`INSERT INTO drills (id, job_id, image_id, state, requested_at, report) VALUES (?, ?, ?, ?, ?, ?)`)
      .run(d.id, d.jobId, d.imageId, d.state, d.requestedAt, JSON.stringify(d.report));
    return this.mustDrill(d.id);
  }

  updateDrill(id: string, patch: Partial<Pick<DrillRecord, 'state' | 'verdict' | 'endedAt' | 'report' | 'reportDir'>>): DrillRecord {
    const cols: Record<string, unknown> = {};
    if (patch.state !== undefined) cols.state = patch.state;
    if (patch.verdict !== undefined) cols.verdict = patch.verdict;
    if (patch.endedAt !== undefined) cols.ended_at = patch.endedAt;
    if (patch.report !== undefined) cols.report = JSON.stringify(patch.report);
    if (patch.reportDir !== undefined) cols.report_dir = patch.reportDir;
    const keys = Object.keys(cols);
    if (keys.length) this.db.prepare(`UPDATE drills SET ${keys.map((k) => `${k} = @${k}`).join(', ')} WHERE id = @id`).run({ ...cols, id });
    return this.mustDrill(id);
  }

  listDrills(jobId: string, limit = 10): DrillRecord[] {
    return (this.db.prepare('SELECT * FROM drills WHERE job_id = ? ORDER BY requested_at DESC, id DESC LIMIT ?').all(jobId, limit) as DrillRow[]).map(drillFromRow);
  }

  activeDrills(): DrillRecord[] {
    return (this.db.prepare(`SELECT * FROM drills WHERE state IN ('queued', 'running') ORDER BY requested_at`).all() as DrillRow[]).map(drillFromRow);
  }

  private mustDrill(id: string): DrillRecord {
    const r = this.db.prepare('SELECT * FROM drills WHERE id = ?').get(id) as DrillRow | undefined;
    if (!r) throw new StateError('NO_DRILL', `no drill ${id}`, { fix: 'list the drills with `vmlift job show`' });
    return drillFromRow(r);
  }

  runningCycles(): CycleRecord[] {
    return (this.db.prepare(`SELECT * FROM cycles WHERE state = 'running' ORDER BY started_at`).all() as CycleRow[]).map(cycleFromRow);
  }

  createWorkgroup(id: string, name: string, description = ''): WorkgroupRecord {
    try {
      this.db.transaction(() => {
        const { n } = this.db.prepare('SELECT COUNT(*) AS n FROM workgroups').get() as { n: number };
        if (n >= WORKGROUPS_MAX && !this.getWorkgroup(id)) {
          throw new StateError('WORKGROUPS_FULL', `the connector already has ${WORKGROUPS_MAX} workgroups, the most it can hold`,
            { fix: 'delete a workgroup you no longer need (`vmlift workgroup delete`), or add the sources to an existing one' });
        }
        this.db.prepare('INSERT INTO workgroups (id, name, created_at, description) VALUES (?, ?, ?, ?)').run(id, name, now(), description);
      })();
    } catch (e) {
      if ((e as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') throw new StateError('WORKGROUP_EXISTS', `workgroup ${id} already exists`, { fix: 'choose another workgroup id' });
      throw e;
    }
    return this.getWorkgroup(id)!;
  }

  getWorkgroup(id: string): WorkgroupRecord | undefined {
    const r = this.db.prepare('SELECT * FROM workgroups WHERE id = ?').get(id) as { id: string; name: string; created_at: string; description: string | null } | undefined;
    if (!r) return undefined;
    const members = (this.db.prepare('SELECT id FROM jobs WHERE workgroup_id = ? ORDER BY id').all(id) as { id: string }[]).map((m) => m.id);
    return { id: r.id, name: r.name, description: r.description ?? '', createdAt: r.created_at, members };
  }

  updateWorkgroup(id: string, patch: Partial<Pick<WorkgroupRecord, 'name' | 'description'>>): WorkgroupRecord {
    if (patch.name !== undefined) this.db.prepare('UPDATE workgroups SET name = ? WHERE id = ?').run(patch.name, id);
    if (patch.description !== undefined) this.db.prepare('UPDATE workgroups SET description = ? WHERE id = ?').run(patch.description, id);
    const wg = this.getWorkgroup(id);
    if (!wg) throw new StateError('NO_WORKGROUP', `no workgroup ${id}`, { fix: 'list workgroups with `vmlift workgroup ls`' });
    return wg;
  }

  listWorkgroups(): WorkgroupRecord[] {
    return (this.db.prepare('SELECT id FROM workgroups ORDER BY id').all() as { id: string }[]).map((r) => this.getWorkgroup(r.id)!);
  }

  addToWorkgroup(workgroupId: string, jobId: string): void {
    this.db.transaction(() => {
      const wg = this.getWorkgroup(workgroupId);
      if (!wg) throw new StateError('NO_WORKGROUP', `no workgroup ${workgroupId}`, { fix: 'list workgroups with `vmlift workgroup ls`' });
      const job = this.mustJob(jobId);
      if (job.workgroupId === workgroupId) return;
      if (job.workgroupId) {
        throw new StateError('IN_OTHER_WORKGROUP', `job ${jobId} already belongs to workgroup ${job.workgroupId}; remove it there first`,
          { fix: `vmlift workgroup remove ${job.workgroupId} ${jobId}` });
      }
      if (wg.members.length >= WORKGROUP_MAX_MEMBERS) {
        throw new StateError('WORKGROUP_FULL', `workgroup ${workgroupId} already holds ${WORKGROUP_MAX_MEMBERS} sources, the most a workgroup can hold; create another workgroup`,
          { fix: 'put the other sources in another workgroup (`vmlift workgroup create`)' });
      }
      this.db.prepare('UPDATE jobs SET workgroup_id = ?, updated_at = ? WHERE id = ?').run(workgroupId, now(), jobId);
    })();
  }

  removeFromWorkgroup(workgroupId: string, jobId: string): void {
    this.db.prepare('UPDATE jobs SET workgroup_id = NULL, updated_at = ? WHERE id = ? AND workgroup_id = ?').run(now(), jobId, workgroupId);
  }

  deleteWorkgroup(id: string): void {
    this.db.transaction(() => {
      this.db.prepare('UPDATE jobs SET workgroup_id = NULL WHERE workgroup_id = ?').run(id);
      this.db.prepare('DELETE FROM workgroups WHERE id = ?').run(id);
    })();
  }

  putTemplate(name: string, settings: Partial<JobSettings>): TemplateRecord {
    this.db.prepare(`INSERT INTO templates (name, settings, created_at) VALUES (?, ?, ?)
      ON CONFLICT (name) DO UPDATE SET settings = excluded.settings`).run(name, JSON.stringify(settings), now());
    return this.getTemplate(name)!;
  }

  getTemplate(name: string): TemplateRecord | undefined {
    const r = this.db.prepare('SELECT * FROM templates WHERE name = ?').get(name) as { name: string; settings: string; created_at: string } | undefined;
    return r ? { name: r.name, settings: JSON.parse(r.settings), createdAt: r.created_at } : undefined;
  }

  listTemplates(): TemplateRecord[] {
    return (this.db.prepare('SELECT name FROM templates ORDER BY name').all() as { name: string }[]).map((r) => this.getTemplate(r.name)!);
  }

  deleteTemplate(name: string): void {
    this.db.prepare('DELETE FROM templates WHERE name = ?').run(name);
  }

  close(): void {
    this.db.close();
  }

  private mustJob(id: string): JobRecord {
    const j = this.getJob(id);
    if (!j) throw new StateError('NO_JOB', `no job ${id}`, { fix: NO_JOB_FIX });
    return j;
  }

  private mustCycle(id: string): CycleRecord {
    const r = this.db.prepare('SELECT * FROM cycles WHERE id = ?').get(id) as CycleRow | undefined;
    if (!r) throw new StateError('NO_CYCLE', `no cycle ${id}`);
    return cycleFromRow(r);
  }
}

/** Adds the columns a table lacks (schema upgrades that only add columns). */
function addColumns(db: Database.Database, table: string, columns: Record<string, string>): void {
  const have = new Set((db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[]).map((c) => c.name));
  for (const [name, type] of Object.entries(columns)) if (!have.has(name)) db.exec(`ALTER TABLE ${table} ADD COLUMN ${name} ${type}`);
}

export function openStateStore(path: string): StateStore {
  const dir = dirname(path);
  try {
    return withNoSpaceErrors(new SqliteStateStore(path), dir);
  } catch (e) {
    if (isStateFull(e)) throw new StateNoSpaceError(dir, 0, e);
    throw e;
  }
}
