/**
 * Durable state of the connector (jobs, cycles, disks' change ids, workgroups, templates) behind
 * an interface; SQLite in WAL mode is the embedded default (src/state/sqlite.ts).
 */
import { CodedError } from '../util/errors.ts';

export const JOB_STATES = ['created', 'syncing', 'waiting', 'paused', 'completing', 'completed', 'error'] as const;
export type JobState = (typeof JOB_STATES)[number];

export const TRANSPORTS = ['auto', 'vddk', 'nbd', 'http'] as const;
export type Transport = (typeof TRANSPORTS)[number];

export interface JobSettings {
  /** Seconds between the starts of two automatic cycles: 3600 (1 h) – 604800 (7 days). */
  intervalSeconds: number;
  /** Images kept on the receiver: 1–10. */
  maxImages: number;
  /** 0 = none, 1–10; default 7. */
  compression: number;
  /** Wire bandwidth limit in Mbps; 0 = unlimited. */
  bandwidthMbps: number;
  /** Verify the committed image against digests computed at the source (off by default; the wire's per-extent SHA-256 is always checked). */
  checksum: boolean;
  /** Quiesce the guest file systems when snapshotting (VMware Tools). */
  quiesce: boolean;
  transport: Transport;
  /** Run incremental cycles on the interval automatically. */
  autoSync: boolean;
  /** Other limits by day and time of day; the first window covering an instant wins (engine/bandwidth-windows.ts). */
  bandwidthWindows?: BandwidthWindow[];
}

/** A bandwidth window: on `days` (0 = Sunday) from `start` to `end` (HH:MM, local to `timeZone`; end before start runs past midnight). */
export interface BandwidthWindow {
  days: number[];
  start: string;
  end: string;
  /** IANA time zone name, always stored (a window written without one gets the connector's). */
  timeZone: string;
  /** Mbps in the window; 0 = unlimited. */
  mbps: number;
}

export interface JobError {
  step: string;
  /** The error's code (absent in records written before codes were kept). */
  code?: string;
  message: string;
  /** What the user can do about it, when known. */
  fix?: string;
  at: string;
  /** Consecutive failed attempts. */
  attempts: number;
}

/**
 * Which of the VM's disks a job reads: `include` by position (0 = the disk with the lowest device
 * key), `exclude` by device key. An excluded disk is never opened or read; images hold the others.
 */
export interface DiskSelection {
  include?: number[];
  exclude?: number[];
}

export interface JobRecord {
  id: string;
  name: string;
  /** Free text the user gives the job (`job create|set --description`); '' when none. */
  description: string;
  /** The disks the job reads; null: every disk. */
  disks: DiskSelection | null;
  kind: 'vm' | 'agent';
  /** vCenter managed object id of the VM (`vm-42`) for kind 'vm'. */
  vmRef: string | null;
  /** Receiver source id the job writes to. */
  sourceId: string;
  settings: JobSettings;
  state: JobState;
  /** State to return to after `paused` / `error` is cleared. */
  resumeState: JobState | null;
  error: JobError | null;
  workgroupId: string | null;
  nextSyncAt: string | null;
  /** The user asked for a sync now. */
  syncRequested: boolean;
  createdAt: string;
  updatedAt: string;
}

export interface DiskRecord {
  jobId: string;
  /** vSphere device key (e.g. 2000) or the agent's device number. */
  diskKey: number;
  label: string;
  capacity: number;
  /** changeId recorded by the last committed cycle; null before the first. */
  changeId: string | null;
  /** The transport the last committed cycle read the disk through (vddk, nbd, http), and why. */
  transport?: string | null;
  transportReason?: string | null;
}

export type CycleKind = 'full' | 'incremental' | 'final';
export type CycleState = 'running' | 'committed' | 'failed';

export interface CycleRecord {
  id: string;
  jobId: string;
  seq: number;
  kind: CycleKind;
  state: CycleState;
  reason: string | null;
  snapshotName: string | null;
  imageId: string | null;
  startedAt: string;
  endedAt: string | null;
  sourceBytesRead: number;
  wireBytes: number;
  changedBytes: number;
  error: string | null;
  /** When the cycle's snapshot was taken (the point in time its image holds); null in older records. */
  snapshotAt?: string | null;
  /** Milliseconds the cycle spent moving data (first read to last flush), for the final-sync forecast. */
  dataMs?: number | null;
}

export interface WorkgroupRecord {
  id: string;
  name: string;
  description: string;
  createdAt: string;
  members: string[];
}

export interface TemplateRecord {
  name: string;
  settings: Partial<JobSettings>;
  createdAt: string;
}

/**
 * A drill of a job's image, run on the receiver (inspect, convert, boot-test). `report` is the
 * receiver's report as it last read it; `reportDir` the connector-side folder with report.json and console.png.
 */
export interface DrillRecord {
  id: string;
  jobId: string;
  imageId: string;
  /** queued, running, passed or abnormal (the receiver's drill states). */
  state: string;
  verdict: string | null;
  requestedAt: string;
  endedAt: string | null;
  report: Record<string, unknown>;
  reportDir: string | null;
}

export type NewJob = Pick<JobRecord, 'id' | 'name' | 'kind' | 'vmRef' | 'sourceId' | 'settings'> & Partial<Pick<JobRecord, 'description' | 'disks'>>;

export interface StateStore {
  createJob(job: NewJob): JobRecord;
  getJob(id: string): JobRecord | undefined;
  listJobs(): JobRecord[];
  updateJob(id: string, patch: Partial<Omit<JobRecord, 'id' | 'createdAt'>>): JobRecord;
  deleteJob(id: string): void;

  setDisks(jobId: string, disks: Omit<DiskRecord, 'jobId'>[]): void;
  getDisks(jobId: string): DiskRecord[];

  startCycle(c: Pick<CycleRecord, 'id' | 'jobId' | 'kind' | 'reason' | 'snapshotName'>): CycleRecord;
  updateCycle(id: string, patch: Partial<Pick<CycleRecord, 'sourceBytesRead' | 'wireBytes' | 'changedBytes' | 'snapshotName' | 'kind' | 'reason' | 'snapshotAt' | 'dataMs'>>): void;
  /** One transaction: the cycle becomes committed with its image and every disk's new changeId is recorded. */
  commitCycle(id: string, imageId: string, changeIds: { diskKey: number; changeId: string | null }[]): CycleRecord;
  failCycle(id: string, error: string): CycleRecord;
  listCycles(jobId: string, limit?: number): CycleRecord[];
  /** Cycles left `running` by a crash. */
  runningCycles(): CycleRecord[];

  createWorkgroup(id: string, name: string, description?: string): WorkgroupRecord;
  updateWorkgroup(id: string, patch: Partial<Pick<WorkgroupRecord, 'name' | 'description'>>): WorkgroupRecord;
  getWorkgroup(id: string): WorkgroupRecord | undefined;
  listWorkgroups(): WorkgroupRecord[];
  addToWorkgroup(workgroupId: string, jobId: string): void;
  removeFromWorkgroup(workgroupId: string, jobId: string): void;
  deleteWorkgroup(id: string): void;

  putTemplate(name: string, settings: Partial<JobSettings>): TemplateRecord;
  getTemplate(name: string): TemplateRecord | undefined;
  listTemplates(): TemplateRecord[];
  deleteTemplate(name: string): void;

  addDrill(d: Omit<DrillRecord, 'endedAt' | 'verdict' | 'reportDir'>): DrillRecord;
  updateDrill(id: string, patch: Partial<Pick<DrillRecord, 'state' | 'verdict' | 'endedAt' | 'report' | 'reportDir'>>): DrillRecord;
  /** Newest first. */
  listDrills(jobId: string, limit?: number): DrillRecord[];
  /** Drills not ended yet (queued or running), of every job. */
  activeDrills(): DrillRecord[];

  close(): void;
}

/** At most this many sources in one workgroup (docs/design.md). */
export const WORKGROUP_MAX_MEMBERS = 50;

/** At most this many workgroups per connector (docs/design.md). */
export const WORKGROUPS_MAX = 50;

/** A refusal of the state store (NO_JOB, JOB_EXISTS, WORKGROUP_FULL, ...). */
export class StateError extends CodedError {}
