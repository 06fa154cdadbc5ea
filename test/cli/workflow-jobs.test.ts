// The job workflow as SMC's documentation describes it (issue 14 part 2), through the CLI against
// `connector serve`, the lab vCenter and a real receiver: each refusal is checked for its message,
// its exit code and its fix.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import { vmlift } from '../vsphere/helpers.ts';
import { api, get, refused, refusedByApi, waitFor, workflowRig, type Job, type View } from './workflow-rig.ts';

const r = workflowRig();

test('a job starts when it is created; --no-start holds it in created; checksum verification is off by default (jobs and templates)', async () => {
  const a1 = await api<Job>(r, ['job', 'create', 'a1', '--vm', 'vm-0001', '--description', 'web tier']);
  assert.equal(a1.state, 'syncing', 'created and started at once');
  assert.equal(a1.settings.checksum, false);
  assert.equal(a1.description, 'web tier');
  const held = await vmlift(['job', 'create', 'a2', '--vm', 'vm-0002', '--no-start', '--home', r.home]);
  assert.equal(held.code, 0, held.stderr);
  assert.match(held.stdout, /created job a2 for vm-0002 \(vm-\d+\); start it with: vmlift job start a2/);
  await api(r, ['template', 'create', 'light', '--compression', '2']);
  const fromTemplate = await api<Job>(r, ['job', 'create', 'a3', '--vm', 'vm-0003', '--template', 'light', '--no-start']);
  assert.deepEqual([fromTemplate.state, fromTemplate.settings.checksum, fromTemplate.settings.compression], ['created', false, 2]);
  const on = await api<Job>(r, ['job', 'set', 'a3', '--checksum', 'on']);
  assert.equal(on.settings.checksum, true, 'checksum can be turned on');
  const v = await waitFor(r, 'a1', (x) => x.job.state === 'waiting' || x.job.state === 'error', 'the first cycle of a1');
  assert.equal(v.job.state, 'waiting', JSON.stringify(v.job.error));
  assert.deepEqual(v.cycles.map((c) => `${c.kind}:${c.state}`), ['full:committed']);
  assert.equal((await get<View>(r, '/v1/jobs/a2')).job.state, 'created', 'a job created with --no-start is not picked by the scheduler');
  // the agent's checksum is opt-in too
  const help = await vmlift(['agent', 'sync', '--help']);
  assert.match(help.stdout, /--checksum\s/);
});

test('job complete --no-final-sync completes on the last image; after completion, sync and complete are refused', async () => {
  await refused(r, ['job', 'complete', 'a2', '--no-final-sync'], 'NOT_STARTED', /job a2 has not synced yet/, /vmlift job start/);
  // 2 MiB of data at 1 Mbps: the cycle runs for ~16 s, so the refusal below meets it running
  const disk = r.lab.vm('vm-0002').disks[0]!;
  await r.lab.write('vm-0002', disk.key, 0, randomBytes(2 << 20));
  await api(r, ['job', 'set', 'a2', '--bandwidth', '1', '--compression', '0']);
  await api(r, ['job', 'start', 'a2']);
  await refused(r, ['job', 'complete', 'a2', '--no-final-sync'], 'CYCLE_RUNNING', /job a2 (is running a cycle|is about to run a cycle)/, /--no-final-sync` again; or complete with a final sync/);
  await api(r, ['job', 'set', 'a2', '--bandwidth', '0']);
  const done = await api<Job>(r, ['job', 'complete', 'a1', '--no-final-sync']);
  assert.equal(done.state, 'completed');
  await sleep(800);
  const v = await get<View>(r, '/v1/jobs/a1');
  assert.equal(v.job.state, 'completed');
  assert.deepEqual(v.cycles.map((c) => c.kind), ['full'], 'no final sync ran');
  await refused(r, ['job', 'sync', 'a1'], 'JOB_COMPLETED', /job a1 is completed; it runs no more cycles/, /create a new job to migrate the VM again/, { text: true });
  await refused(r, ['job', 'complete', 'a1'], 'ALREADY_COMPLETED', /job a1 is already completed/, /vmlift image ls/);
  // with a final sync (as before): one more cycle, of kind final
  await waitFor(r, 'a2', (x) => x.job.state === 'waiting', 'a2\'s first cycle');
  await api(r, ['job', 'complete', 'a2']);
  const a2 = await waitFor(r, 'a2', (x) => x.job.state === 'completed' || x.job.state === 'error', 'a2\'s final sync');
  assert.deepEqual(a2.cycles.map((c) => `${c.kind}:${c.state}`), ['final:committed', 'full:committed']);
});

test('job set edits the name and the description; a failed job shows its step, code, message, fix and attempts', async () => {
  const j = await api<Job>(r, ['job', 'set', 'a3', '--name', 'Web 03', '--description', 'the third web server']);
  assert.deepEqual([j.name, j.description], ['Web 03', 'the third web server']);
  const shown = await vmlift(['job', 'show', 'a3', '--home', r.home]);
  assert.match(shown.stdout, /^job a3 \(Web 03\) /);
  assert.match(shown.stdout, /\n {2}the third web server\n/);
  await refused(r, ['job', 'set', 'a3'], 'BAD_SETTING', /job set was given nothing to change/, /--name or --description/);
  await refusedByApi(r, 'PATCH', '/v1/jobs/a3', { description: 'x'.repeat(300) }, 'BAD_DESCRIPTION', /at most 256 printable characters \(got 300\)/, /shorten --description/);

  await api(r, ['job', 'create', 'snap', '--vm', 'shape-snapshot']);
  const v = await waitFor(r, 'snap', (x) => x.job.state === 'error', 'the preflight refusal');
  const e = v.job.error!;
  assert.deepEqual([e.step, e.code, e.attempts], ['preflight', 'PREFLIGHT', 1]);
  assert.match(e.message, /preflight failed: .*snapshot/);
  assert.match(e.fix ?? '', /Snapshots → Delete All/);
  const text = await vmlift(['job', 'show', 'snap', '--home', r.home]);
  assert.match(text.stdout, /error in step preflight \(PREFLIGHT\), attempt 1, at \S+: preflight: preflight failed: /);
  assert.match(text.stdout, /\n {2}fix: .*Snapshots → Delete All/);
  assert.match(text.stdout, /see docs\/errors\.md#preflight/);
  await refused(r, ['job', 'complete', 'snap', '--no-final-sync'], 'NO_IMAGE', /job snap has no committed image yet/, /complete it with a final sync/);
});

test('--disks and --exclude-disk: refused when malformed; the excluded disk is never read; the images show the disks they hold', async () => {
  await refused(r, ['job', 'create', 'dd', '--vm', 'two-disks', '--disks', '0', '--exclude-disk', '2001'], 'BAD_DISKS', /--disks and --exclude-disk exclude each other/, /by position \(--disks 0,2\)/);
  await refusedByApi(r, 'POST', '/v1/jobs', { id: 'dd', vm: 'two-disks', disks: { include: '0,x' } }, 'BAD_DISKS', /--disks wants whole numbers, got "x"/, /comma-separated list/);
  const [d0, d1] = r.lab.vm('two-disks').disks;
  await refused(r, ['job', 'create', 'dd', '--vm', 'two-disks', '--exclude-disk', '2999'], 'NO_SUCH_DISK', /two-disks has no disk with device key 2999 \(its keys: \d+, \d+\)/, /vmlift vc show two-disks/);
  await refusedByApi(r, 'POST', '/v1/jobs', { id: 'dd', vm: 'two-disks', disks: { include: '2' } }, 'NO_SUCH_DISK', /two-disks has 2 disk\(s\) \(positions 0–1\); --disks names 2/, /--disks/);
  await r.lab.traffic(true);
  const j = await api<Job & { disks: unknown }>(r, ['job', 'create', 'dd', '--vm', 'two-disks', '--exclude-disk', String(d1!.key)]);
  assert.deepEqual(j.disks, { exclude: [d1!.key] });
  const v = await waitFor(r, 'dd', (x) => x.job.state === 'waiting' || x.job.state === 'error', 'the cycle of dd');
  assert.equal(v.job.state, 'waiting', JSON.stringify(v.job.error));
  const t = await r.lab.traffic();
  assert.ok((t[`two-disks/${d0!.key}`]?.folderBytes ?? 0) > 0);
  assert.equal(t[`two-disks/${d1!.key}`], undefined, `nothing of disk ${d1!.key} was served: ${JSON.stringify(t)}`);
  const shown = await vmlift(['job', 'show', 'dd', '--home', r.home]);
  assert.match(shown.stdout, new RegExp(`disks: all but device key\\(s\\) ${d1!.key}`));
  assert.match(shown.stdout, new RegExp(`${v.cycles[0]!.imageId} +\\S+ +1 \\(keys ${d0!.key}; not ${d1!.key}\\)`), shown.stdout);
  assert.deepEqual(v.images[0]!.meta.diskKeys, [d0!.key]);
});

