import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import Database from 'better-sqlite3';
import { openStateStore } from '../../src/state/sqlite.ts';
import { StateError, WORKGROUP_MAX_MEMBERS, type JobSettings } from '../../src/state/types.ts';

const settings: JobSettings = {
  intervalSeconds: 3600, maxImages: 3, compression: 7, bandwidthMbps: 0,
  checksum: true, quiesce: false, transport: 'auto', autoSync: true,
};

function tempDb(): { path: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-state-'));
  return { path: join(dir, 'state.db'), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

test('jobs, disks and a committed cycle survive reopening, in WAL mode', (t) => {
  const { path, cleanup } = tempDb();
  t.after(cleanup);
  const s = openStateStore(path);
  s.createJob({ id: 'web-1', name: 'web 1', kind: 'vm', vmRef: 'vm-42', sourceId: 'web-1', settings });
  s.setDisks('web-1', [
    { diskKey: 2000, label: 'Hard disk 1', capacity: 1 << 30, changeId: null },
    { diskKey: 2001, label: 'Hard disk 2', capacity: 2 << 30, changeId: null },
  ]);
  const c1 = s.startCycle({ id: 'c1', jobId: 'web-1', kind: 'full', reason: 'first cycle', snapshotName: 'vmlift-c1' });
  assert.equal(c1.seq, 1);
  s.updateCycle('c1', { sourceBytesRead: 100, wireBytes: 60, changedBytes: 100 });
  s.commitCycle('c1', '1', [{ diskKey: 2000, changeId: '52 aa/4' }, { diskKey: 2001, changeId: '52 bb/7' }]);
  s.updateJob('web-1', { state: 'waiting', nextSyncAt: '2026-01-01T00:00:00.000Z' });
  s.close();

  const raw = new Database(path);
  assert.equal(raw.pragma('journal_mode', { simple: true }), 'wal');
  raw.close();

  const s2 = openStateStore(path);
  const job = s2.getJob('web-1')!;
  assert.equal(job.state, 'waiting');
  assert.deepEqual(job.settings, settings);
  assert.deepEqual(s2.getDisks('web-1').map((d) => d.changeId), ['52 aa/4', '52 bb/7']);
  const [cycle] = s2.listCycles('web-1');
  assert.equal(cycle!.state, 'committed');
  assert.equal(cycle!.imageId, '1');
  assert.equal(cycle!.wireBytes, 60);
  assert.equal(s2.startCycle({ id: 'c2', jobId: 'web-1', kind: 'incremental', reason: null, snapshotName: null }).seq, 2);
  s2.close();
});

test('a failed cycle records no changeIds; a cycle cannot be committed twice', (t) => {
  const { path, cleanup } = tempDb();
  t.after(cleanup);
  const s = openStateStore(path);
  t.after(() => s.close());
  s.createJob({ id: 'db-1', name: 'db', kind: 'vm', vmRef: 'vm-7', sourceId: 'db-1', settings });
  s.setDisks('db-1', [{ diskKey: 2000, label: 'Hard disk 1', capacity: 4096, changeId: 'u/1' }]);
  s.startCycle({ id: 'c1', jobId: 'db-1', kind: 'incremental', reason: null, snapshotName: null });
  assert.equal(s.failCycle('c1', 'read error at offset 4096').state, 'failed');
  assert.equal(s.getDisks('db-1')[0]!.changeId, 'u/1');
  assert.throws(() => s.commitCycle('c1', '2', [{ diskKey: 2000, changeId: 'u/2' }]), (e: unknown) => e instanceof StateError && e.code === 'CYCLE_NOT_RUNNING');
  s.startCycle({ id: 'c2', jobId: 'db-1', kind: 'incremental', reason: null, snapshotName: null });
  // An unknown disk rolls back the whole commit: the cycle stays running and no changeId moves.
  assert.throws(() => s.commitCycle('c2', '2', [{ diskKey: 2000, changeId: 'u/3' }, { diskKey: 9999, changeId: 'x/1' }]), /no disk 9999/);
  assert.equal(s.getDisks('db-1')[0]!.changeId, 'u/1');
  assert.deepEqual(s.runningCycles().map((c) => c.id), ['c2']);
});

test('a commit survives kill -9 of the writing process right after it returns', (t) => {
  const { path, cleanup } = tempDb();
  t.after(cleanup);
  const s = openStateStore(path);
  s.createJob({ id: 'app-1', name: 'app', kind: 'vm', vmRef: 'vm-1', sourceId: 'app-1', settings });
  s.setDisks('app-1', [{ diskKey: 2000, label: 'Hard disk 1', capacity: 4096, changeId: null }]);
  s.startCycle({ id: 'c1', jobId: 'app-1', kind: 'full', reason: null, snapshotName: null });
  s.close();
  const script = `
    import { openStateStore } from ${JSON.stringify(new URL('../../src/state/sqlite.ts', import.meta.url).pathname)};
    const s = openStateStore(${JSON.stringify(path)});
    s.commitCycle('c1', '1', [{ diskKey: 2000, changeId: 'abc/1' }]);
    process.kill(process.pid, 'SIGKILL');`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(r.signal, 'SIGKILL', r.stderr);
  const s2 = openStateStore(path);
  t.after(() => s2.close());
  assert.equal(s2.getDisks('app-1')[0]!.changeId, 'abc/1');
  assert.equal(s2.listCycles('app-1')[0]!.state, 'committed');
});

test('workgroups hold at most 50 sources, each source in one workgroup', (t) => {
  const { path, cleanup } = tempDb();
  t.after(cleanup);
  const s = openStateStore(path);
  t.after(() => s.close());
  s.createWorkgroup('wave-1', 'Wave 1');
  s.createWorkgroup('wave-2', 'Wave 2');
  for (let i = 0; i <= WORKGROUP_MAX_MEMBERS; i++) {
    s.createJob({ id: `vm-${i}`, name: `vm ${i}`, kind: 'vm', vmRef: `vm-${i}`, sourceId: `vm-${i}`, settings });
  }
  for (let i = 0; i < WORKGROUP_MAX_MEMBERS; i++) s.addToWorkgroup('wave-1', `vm-${i}`);
  assert.throws(() => s.addToWorkgroup('wave-1', `vm-${WORKGROUP_MAX_MEMBERS}`), /already holds 50 sources/);
  assert.throws(() => s.addToWorkgroup('wave-2', 'vm-0'), /already belongs to workgroup wave-1/);
  s.addToWorkgroup('wave-1', 'vm-0'); // idempotent
  s.removeFromWorkgroup('wave-1', 'vm-0');
  s.addToWorkgroup('wave-2', 'vm-0');
  assert.equal(s.getWorkgroup('wave-1')!.members.length, WORKGROUP_MAX_MEMBERS - 1);
  assert.deepEqual(s.getWorkgroup('wave-2')!.members, ['vm-0']);
  assert.throws(() => s.createWorkgroup('wave-1', 'again'), /already exists/);
  s.deleteWorkgroup('wave-2');
  assert.equal(s.getJob('vm-0')!.workgroupId, null);
});

test('templates are named partial settings', (t) => {
  const { path, cleanup } = tempDb();
  t.after(cleanup);
  const s = openStateStore(path);
  t.after(() => s.close());
  s.putTemplate('nightly', { intervalSeconds: 86400, compression: 3 });
  s.putTemplate('nightly', { intervalSeconds: 86400, compression: 5 });
  assert.deepEqual(s.getTemplate('nightly')!.settings, { intervalSeconds: 86400, compression: 5 });
  assert.deepEqual(s.listTemplates().map((x) => x.name), ['nightly']);
  s.deleteTemplate('nightly');
  assert.equal(s.getTemplate('nightly'), undefined);
});

test('a schema-1 state file gains the disks\' transport columns on open, keeping its rows; setDisks records and keeps the transport', (t) => {
  const { path, cleanup } = tempDb();
  t.after(cleanup);
  const old = new Database(path);
  old.exec(`CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, vm_ref TEXT, source_id TEXT NOT NULL,
    settings TEXT NOT NULL, state TEXT NOT NULL, resume_state TEXT, error TEXT, workgroup_id TEXT, next_sync_at TEXT,
    sync_requested INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE TABLE disks (job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, disk_key INTEGER NOT NULL,
    label TEXT NOT NULL, capacity INTEGER NOT NULL, change_id TEXT, PRIMARY KEY (job_id, disk_key));
    INSERT INTO jobs VALUES ('j', 'j', 'vm', 'vm-1', 'j', '${JSON.stringify(settings)}', 'waiting', NULL, NULL, NULL, NULL, 0, 't', 't');
    INSERT INTO disks VALUES ('j', 2000, 'Hard disk 1', 1024, 'abc/1');
    PRAGMA user_version = 1;`);
  old.close();
  const s = openStateStore(path);
  assert.deepEqual(s.getDisks('j').map((d) => [d.changeId, d.transport, d.transportReason]), [['abc/1', null, null]]);
  s.setDisks('j', [{ diskKey: 2000, label: 'Hard disk 1', capacity: 1024, changeId: null, transport: 'nbd', transportReason: 'auto: no VDDK' }]);
  assert.deepEqual(s.getDisks('j').map((d) => [d.changeId, d.transport, d.transportReason]), [['abc/1', 'nbd', 'auto: no VDDK']]);
  s.setDisks('j', [{ diskKey: 2000, label: 'Hard disk 1', capacity: 1024, changeId: null }]);
  assert.equal(s.getDisks('j')[0]!.transport, 'nbd', 'a cycle that read nothing keeps the last transport');
  s.close();
});

test('drills: recorded per job newest first, updated to their end, listed while active, gone with the job; a schema-2 file gains the table', (t) => {
  const { path, cleanup } = tempDb();
  t.after(cleanup);
  const s = openStateStore(path);
  s.createJob({ id: 'web', name: 'web', kind: 'vm', vmRef: 'vm-1', sourceId: 'web', settings });
  s.addDrill({ id: 'd1', jobId: 'web', imageId: 'i1', state: 'queued', requestedAt: '2026-12-01T10:00:00.000Z', report: { drillId: 'd1' } });
  s.addDrill({ id: 'd2', jobId: 'web', imageId: 'i2', state: 'queued', requestedAt: '2026-12-01T11:00:00.000Z', report: { drillId: 'd2' } });
  assert.deepEqual(s.listDrills('web').map((d) => d.id), ['d2', 'd1']);
  assert.deepEqual(s.activeDrills().map((d) => d.id), ['d1', 'd2']);
  const done = s.updateDrill('d1', { state: 'abnormal', verdict: 'drill abnormal', endedAt: '2026-12-01T10:05:00.000Z', report: { drillId: 'd1', x: 1 }, reportDir: '/h/drills/web/d1' });
  assert.deepEqual([done.state, done.verdict, done.endedAt, done.report, done.reportDir], ['abnormal', 'drill abnormal', '2026-12-01T10:05:00.000Z', { drillId: 'd1', x: 1 }, '/h/drills/web/d1']);
  assert.deepEqual(s.activeDrills().map((d) => d.id), ['d2']);
  assert.throws(() => s.updateDrill('nope', { state: 'passed' }), /no drill nope/);
  s.deleteJob('web');
  assert.deepEqual(s.listDrills('web'), []);
  s.close();

  const old = new Database(path);
  old.exec('DROP TABLE drills; PRAGMA user_version = 2;');
  old.close();
  const again = openStateStore(path);
  again.createJob({ id: 'db', name: 'db', kind: 'vm', vmRef: 'vm-2', sourceId: 'db', settings });
  assert.equal(again.addDrill({ id: 'd3', jobId: 'db', imageId: 'i1', state: 'queued', requestedAt: 't', report: {} }).state, 'queued');
  again.close();
  const v = new Database(path);
  assert.equal(v.pragma('user_version', { simple: true }), 4, 'upgraded to the current schema');
  v.close();
});

test('cycles keep when their snapshot was taken and how long they moved data; a schema-3 file gains the columns', (t) => {
  const { path, cleanup } = tempDb();
  t.after(cleanup);
  const s = openStateStore(path);
  s.createJob({ id: 'web', name: 'web', kind: 'vm', vmRef: 'vm-1', sourceId: 'web', settings });
  s.startCycle({ id: 'c1', jobId: 'web', kind: 'full', reason: null, snapshotName: null });
  s.updateCycle('c1', { snapshotName: 'vmlift-c1', snapshotAt: '2026-12-01T10:00:01.000Z' });
  s.updateCycle('c1', { changedBytes: 5, dataMs: 1234 });
  const c = s.listCycles('web')[0]!;
  assert.deepEqual([c.snapshotName, c.snapshotAt, c.dataMs, c.changedBytes], ['vmlift-c1', '2026-12-01T10:00:01.000Z', 1234, 5]);
  s.close();

  const old = new Database(path);
  old.exec(`ALTER TABLE cycles DROP COLUMN snapshot_at; ALTER TABLE cycles DROP COLUMN data_ms; PRAGMA user_version = 3;`);
  old.close();
  const again = openStateStore(path);
  const before = again.listCycles('web')[0]!;
  assert.deepEqual([before.snapshotAt, before.dataMs], [null, null], 'older cycles have no timings');
  again.updateCycle('c1', { dataMs: 7 });
  assert.equal(again.listCycles('web')[0]!.dataMs, 7);
  again.close();
  const v = new Database(path);
  assert.equal(v.pragma('user_version', { simple: true }), 4);
  v.close();
});
