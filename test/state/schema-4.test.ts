// Schema 4: job descriptions and disk selections, workgroup descriptions, at most 50 workgroups; a
// state database of schema 3 (before them) opens with its jobs and workgroups kept.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { openStateStore } from '../../src/state/sqlite.ts';
import { WORKGROUPS_MAX, type JobSettings } from '../../src/state/types.ts';

const settings: JobSettings = { intervalSeconds: 3600, maxImages: 3, compression: 7, bandwidthMbps: 0, checksum: false, quiesce: false, transport: 'auto', autoSync: true };

test('a schema 3 database gains the new columns and keeps its rows; descriptions and disk selections round-trip; the 51st workgroup is refused', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-state4-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'state.db');
  // the tables of schema 3, as a connector of that version left them
  const old = new Database(path);
  old.exec(`CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, vm_ref TEXT, source_id TEXT NOT NULL,
      settings TEXT NOT NULL, state TEXT NOT NULL, resume_state TEXT, error TEXT, workgroup_id TEXT,
      next_sync_at TEXT, sync_requested INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE TABLE workgroups (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL);
    CREATE TABLE disks (job_id TEXT NOT NULL, disk_key INTEGER NOT NULL, label TEXT NOT NULL, capacity INTEGER NOT NULL, change_id TEXT,
      transport TEXT, transport_reason TEXT, PRIMARY KEY (job_id, disk_key));`);
  old.prepare(`INSERT INTO jobs (id, name, kind, vm_ref, source_id, settings, state, workgroup_id, created_at, updated_at)
    VALUES ('web-1', 'web 1', 'vm', 'vm-42', 'web-1', ?, 'waiting', 'wave-1', 'x', 'x')`).run(JSON.stringify(settings));
  old.prepare(`INSERT INTO workgroups (id, name, created_at) VALUES ('wave-1', 'Wave-1', 'x')`).run();
  old.pragma('user_version = 3');
  old.close();

  const s = openStateStore(path);
  const job = s.getJob('web-1')!;
  assert.deepEqual([job.state, job.description, job.disks, job.workgroupId], ['waiting', '', null, 'wave-1']);
  assert.deepEqual(s.getWorkgroup('wave-1'), { id: 'wave-1', name: 'Wave-1', description: '', createdAt: 'x', members: ['web-1'] });
  s.createJob({ id: 'db-1', name: 'db 1', kind: 'vm', vmRef: 'vm-43', sourceId: 'db-1', settings, description: 'the database', disks: { exclude: [2001] } });
  assert.deepEqual([s.getJob('db-1')!.description, s.getJob('db-1')!.disks], ['the database', { exclude: [2001] }]);
  s.updateJob('db-1', { description: 'moved', disks: { include: [0, 2] } });
  assert.deepEqual([s.getJob('db-1')!.description, s.getJob('db-1')!.disks], ['moved', { include: [0, 2] }]);
  assert.equal(s.updateWorkgroup('wave-1', { description: 'first wave' }).description, 'first wave');
  for (let i = 1; i < WORKGROUPS_MAX; i++) s.createWorkgroup(`w-${i}`, `W-${i}`);
  assert.equal(s.listWorkgroups().length, 50);
  assert.throws(() => s.createWorkgroup('w-51', 'W-51'), (e: unknown) => (e as { code?: string }).code === 'WORKGROUPS_FULL' && /already has 50 workgroups/.test((e as Error).message) && !!(e as { fix?: string }).fix);
  assert.throws(() => s.createWorkgroup('wave-1', 'again'), /already exists/, 'an existing id is still WORKGROUP_EXISTS');
  s.close();
  const again = new Database(path, { readonly: true });
  assert.equal(again.pragma('user_version', { simple: true }), 4);
  again.close();
});
