/**
 * The connector's state folder on a real full filesystem (a 4 MiB tmpfs): SQLite's SQLITE_FULL
 * becomes STATE_NO_SPACE naming the folder, the failed transaction leaves nothing half-way, the
 * state stays readable (also after reopening), and once space is freed the same writes succeed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { openStateStore } from '../../src/state/sqlite.ts';
import type { JobSettings, StateStore } from '../../src/state/types.ts';
import { canMount, smallFs } from '../util/small-fs.ts';

const settings: JobSettings = {
  intervalSeconds: 3600, maxImages: 3, compression: 7, bandwidthMbps: 0,
  checksum: true, quiesce: false, transport: 'auto', autoSync: true,
};
const skip = canMount() ? false : 'needs root to mount a tmpfs';

/** Many disks with long labels, so that one commit writes many pages. */
function seed(s: StateStore): void {
  s.createJob({ id: 'web-1', name: 'web 1', kind: 'vm', vmRef: 'vm-42', sourceId: 'web-1', settings });
  s.setDisks('web-1', Array.from({ length: 200 }, (_, i) => ({ diskKey: 2000 + i, label: `Hard disk ${i} ${'x'.repeat(300)}`, capacity: 1 << 30, changeId: null })));
  s.startCycle({ id: 'c1', jobId: 'web-1', kind: 'full', reason: 'first cycle', snapshotName: 'vmlift-c1' });
}

const bigChangeIds = (tag: string) => Array.from({ length: 200 }, (_, i) => ({ diskKey: 2000 + i, changeId: `52 ${tag} ${'c'.repeat(1500)}/${i}` }));

test('SQLITE_FULL: STATE_NO_SPACE naming the folder, nothing half-way, readable, then writable once space is freed', { skip }, (t) => {
  const fs = smallFs(t, 4);
  const home = join(fs.dir, 'home');
  const path = join(home, 'state.db');
  let s = openStateStore(path);
  seed(s);
  fs.fill(0);
  let err: unknown;
  try { s.commitCycle('c1', '1', bigChangeIds('aa')); } catch (e) { err = e; }
  assert.ok(err, 'the commit fails on a full filesystem');
  const e = err as { code?: string; message: string; fix?: string; cause?: { code?: string } };
  assert.equal(e.code, 'STATE_NO_SPACE', `${e.code}: ${e.message}`);
  assert.match(e.message, new RegExp(`state folder ${home.replace(/[/\\]/g, '.')} is full`));
  assert.match(e.fix ?? '', new RegExp(`free space in ${home.replace(/[/\\]/g, '.')}.*job resume`));
  assert.match(String(e.cause?.code), /SQLITE_FULL|SQLITE_IOERR/);

  // nothing half-way: the cycle is still running and no disk has a changeId
  assert.equal(s.listCycles('web-1')[0]!.state, 'running');
  assert.ok(s.getDisks('web-1').every((d) => d.changeId === null));
  assert.equal(s.getJob('web-1')!.state, 'created');
  s.close();
  s = openStateStore(path);
  assert.equal(s.runningCycles().length, 1, 'readable after reopening on the full folder');
  assert.ok(s.getDisks('web-1').every((d) => d.changeId === null));

  fs.unfill();
  const c = s.commitCycle('c1', '1', bigChangeIds('bb'));
  assert.equal(c.state, 'committed');
  assert.ok(s.getDisks('web-1').every((d) => d.changeId?.startsWith('52 bb')));
  s.close();
});
