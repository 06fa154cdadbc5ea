// Workgroups as SMC's documentation describes them (issue 14 part 2), through the CLI against
// `connector serve` and the lab vCenter: each refusal is checked for its message, exit code and fix.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { vmlift } from '../vsphere/helpers.ts';
import { api, get, refused, refusedByApi, waitFor, workflowRig, type Member, type View } from './workflow-rig.ts';

const r = workflowRig(1);

test('workgroups: display-name rules, description, create --vms --template, set for all members, counts by state, start --dry-run, delete and --detach, at most 50', async () => {
  await api(r, ['template', 'create', 'light', '--compression', '2']);
  // p1 paused before it ever started; a3 with 2 MiB of data, to be syncing (at 1 Mbps) when delete is tried
  await api(r, ['job', 'create', 'p1', '--vm', 'vm-0001', '--no-start']);
  assert.equal((await api<{ state: string }>(r, ['job', 'pause', 'p1'])).state, 'paused');
  await r.lab.write('two-disks', r.lab.vm('two-disks').disks[0]!.key, 0, randomBytes(2 << 20));
  await api(r, ['job', 'create', 'a3', '--vm', 'two-disks', '--no-start']);
  const fix = /2 to 64 characters that start with a letter or a CJK character/;
  await refused(r, ['workgroup', 'create', 'w1', '--name', 'https://wave'], 'BAD_NAME', /starts with https:\/\/; names may not start with http:\/\/ or https:\/\//, fix, { text: true });
  const create = (body: object, code: string, message: RegExp, why: RegExp) => refusedByApi(r, 'POST', '/v1/workgroups', { id: 'w1', ...body }, code, message, why);
  await create({ name: 'x' }, 'BAD_NAME', /has 1 characters; a name has 2 to 64/, fix);
  await create({ name: 'y'.repeat(65) }, 'BAD_NAME', /has 65 characters/, fix);
  await create({ name: '1st-wave' }, 'BAD_NAME', /does not start with a letter or a CJK character/, fix);
  await create({ name: 'wave one' }, 'BAD_NAME', /holds " "/, fix);
  await create({ id: 'Wave1' }, 'BAD_ID', /invalid workgroup id "Wave1"/, /use the workgroup id "wave1"/);
  await create({ description: 'd'.repeat(257) }, 'BAD_DESCRIPTION', /at most 256/, /shorten --description/);
  await create({ template: 'light' }, 'BAD_VMS', /--template applies to the jobs --vms creates/, /pass --vms/);
  assert.equal((await get<unknown[]>(r, '/v1/workgroups')).length, 0, 'nothing was created by a refused create');
  const cjk = await api<{ workgroup: { name: string } }>(r, ['workgroup', 'create', 'cjk', '--name', '迁移:第一批.wave_1-a']);
  assert.equal(cjk.workgroup.name, '迁移:第一批.wave_1-a');

  // create --vms: a job per VM from the template, held in created; a VM that is not there is listed, the rest go on
  const made = await vmlift(['workgroup', 'create', 'wave', '--name', 'Wave-1', '--description', 'first wave', '--vms', 'shape-independent,shape-vmx04,no-such-vm',
    '--template', 'light', '--no-start', '--home', r.home, '--json']);
  assert.equal(made.code, 1, 'a VM that could not become a job makes the command exit 1');
  const res = JSON.parse(made.stdout) as { workgroup: { id: string; name: string; description: string; members: string[] }; jobs: Member[] };
  assert.deepEqual([res.workgroup.name, res.workgroup.description, res.workgroup.members], ['Wave-1', 'first wave', ['shape-independent', 'shape-vmx04']]);
  assert.deepEqual(res.jobs.map((m) => [m.jobId, m.ok]), [['shape-independent', true], ['shape-vmx04', true], ['no-such-vm', false]]);
  assert.match(res.jobs[2]!.reason!, /no-such-vm/);
  assert.ok(res.jobs[2]!.code && res.jobs[2]!.fix, JSON.stringify(res.jobs[2]));
  const member = await get<View>(r, '/v1/jobs/shape-vmx04');
  assert.deepEqual([member.job.state, member.job.settings.compression, member.job.workgroupId], ['created', 2, 'wave']);
  const added = await api<Member[]>(r, ['workgroup', 'add', 'wave', 'p1', 'a3']);
  assert.ok(added.every((m) => m.ok));

  // set: bandwidth, compression and checksum of every member (1 Mbps keeps a3's first cycle running for a minute: it syncs when delete is tried)
  const set = await api<{ members: Member[] }>(r, ['workgroup', 'set', 'wave', '--bandwidth', '1', '--compression', '0', '--checksum', 'on']);
  assert.ok(set.members.every((m) => m.ok) && set.members.length === 4, JSON.stringify(set));
  for (const id of ['a3', 'p1', 'shape-independent', 'shape-vmx04']) {
    const s = (await get<View>(r, `/v1/jobs/${id}`)).job.settings;
    assert.deepEqual([s.bandwidthMbps, s.compression, s.checksum], [1, 0, true], id);
  }
  await refused(r, ['workgroup', 'set', 'wave'], 'BAD_SETTING', /workgroup set was given nothing to change/, /--bandwidth, --compression or --checksum/);
  await refusedByApi(r, 'PATCH', '/v1/workgroups/wave', { name: 'ab cd' }, 'BAD_NAME', /holds " "/, fix);

  // counts by state in ls and show
  const ls = await api<{ id: string; counts: Record<string, number> }[]>(r, ['workgroup', 'ls']);
  assert.deepEqual(ls.find((w) => w.id === 'wave')!.counts, { paused: 1, created: 3 });
  const lsText = await vmlift(['workgroup', 'ls', '--home', r.home]);
  assert.match(lsText.stdout, /wave +Wave-1 +4 +3 created, 1 paused +first wave/);
  const show = await api<{ counts: Record<string, number> }>(r, ['workgroup', 'show', 'wave']);
  assert.deepEqual(show.counts, { paused: 1, created: 3 });
  assert.match((await vmlift(['workgroup', 'show', 'wave', '--home', r.home])).stdout, /^workgroup wave \(Wave-1, 4\/50\): 3 created, 1 paused\n {2}first wave\n/);

  // start --dry-run: each member that cannot start, and why, before anything starts
  const dry = await vmlift(['workgroup', 'start', 'wave', '--dry-run', '--home', r.home, '--json']);
  assert.equal(dry.code, 1, dry.stderr);
  const rows = JSON.parse(dry.stdout) as Member[];
  const by = new Map(rows.map((m) => [m.jobId, m]));
  assert.equal(by.get('p1')!.code, 'JOB_PAUSED');
  assert.match(by.get('p1')!.reason!, /job p1 is paused; start leaves a paused job as it is/);
  assert.match(by.get('p1')!.fix!, /vmlift job resume p1/);
  assert.equal(by.get('shape-vmx04')!.code, 'PREFLIGHT');
  assert.match(by.get('shape-vmx04')!.reason!, /preflight failed: .*vmx-04/);
  assert.ok(by.get('shape-vmx04')!.fix, 'the preflight failure carries its fix');
  assert.deepEqual([by.get('a3')!.ok, by.get('a3')!.state], [true, 'would start']);
  assert.ok(by.has('shape-independent'), 'every member is listed');
  const dryText = await vmlift(['workgroup', 'start', 'wave', '--dry-run', '--home', r.home]);
  assert.match(dryText.stdout, /shape-vmx04 +no +created +PREFLIGHT: preflight failed/);
  assert.deepEqual((await get<{ counts: Record<string, number> }>(r, '/v1/workgroups/wave')).counts, { paused: 1, created: 3 }, 'the dry run started nothing');

  // delete: refused while members sync; --detach removes them first
  const start = await vmlift(['workgroup', 'start', 'wave', '--home', r.home, '--json']);
  assert.equal(start.code, 1, 'the paused member cannot start');
  await waitFor(r, 'a3', (x) => x.job.state === 'syncing', 'a3 syncing');
  await refused(r, ['workgroup', 'delete', 'wave'], 'WORKGROUP_BUSY', /workgroup wave has [1-3] member\(s\) syncing \([^)]*a3/, /--detach to remove the members from the workgroup first/, { text: true });
  const del = await api<{ deleted: string; detached: string[] }>(r, ['workgroup', 'delete', 'wave', '--detach']);
  assert.deepEqual(del.detached.sort(), ['a3', 'p1', 'shape-independent', 'shape-vmx04']);
  assert.equal((await get<View>(r, '/v1/jobs/a3')).job.state, 'syncing', 'a detached member goes on syncing');
  for (const id of del.detached) assert.equal((await get<View>(r, `/v1/jobs/${id}`)).job.workgroupId, null, id);
  await refused(r, ['workgroup', 'show', 'wave'], 'NO_WORKGROUP', /no workgroup named wave/, /vmlift workgroup ls/);
  // a workgroup with no member syncing is deleted without --detach
  await api(r, ['workgroup', 'create', 'idle']);
  await api(r, ['workgroup', 'add', 'idle', 'p1']);
  assert.deepEqual(await api(r, ['workgroup', 'delete', 'idle']), { deleted: 'idle', detached: ['p1'] });

  // at most 50 workgroups
  const have = (await get<unknown[]>(r, '/v1/workgroups')).length;
  for (let i = have; i < 50; i++) await get(r, '/v1/workgroups', 'POST', { id: `fill-${i}` });
  assert.equal((await get<unknown[]>(r, '/v1/workgroups')).length, 50);
  await refused(r, ['workgroup', 'create', 'one-more'], 'WORKGROUPS_FULL', /already has 50 workgroups/, /workgroup delete/);
});
