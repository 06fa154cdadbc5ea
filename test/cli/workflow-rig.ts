// The rig of the workflow tests (issue 14 part 2): `connector serve` over the lab vCenter and a real
// receiver, the CLI against it, and `refused`, which checks a refusal's message, exit code and fix.
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startLab, type Lab } from '../../lab/lab.ts';
import { startTestReceiver, type TestRx } from '../transfer/helpers.ts';
import { vmlift } from '../vsphere/helpers.ts';
import { connectorProcess, initConnector, type ConnectorProcess } from '../engine/connector-process.ts';

export interface Job { id: string; name: string; description: string; state: string; workgroupId: string | null; settings: { checksum: boolean; compression: number; bandwidthMbps: number } }
export interface JobError { step: string; code?: string; message: string; fix?: string; attempts: number }
export interface View { job: Job & { error: JobError | null }; cycles: { kind: string; state: string; imageId: string | null }[]; images: { imageId: string; meta: Record<string, unknown> }[] }
export interface Member { jobId: string; ok: boolean; state?: string; reason?: string; code?: string; fix?: string }
export interface Refusal { code: number; error: { code: string; message: string; fix?: string }; stderr: string }

export interface WorkflowRig { lab: Lab; rx: TestRx; home: string; proc: ConnectorProcess }

/** Starts the rig before the file's tests (lab with `vms` plain VMs of 8 MiB) and stops it after them. */
export function workflowRig(vms = 3): WorkflowRig {
  const r = {} as WorkflowRig;
  let dir = '';
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vmlift-workflow-'));
    r.lab = await startLab({ dir: join(dir, 'lab'), vms, diskMb: 8 });
    r.rx = await startTestReceiver();
    r.home = (await initConnector(dir, r.lab, r.rx)).home;
    r.proc = connectorProcess(r.home);
    await r.proc.serve();
  });
  after(async () => {
    r.proc?.kill();
    await r.rx?.close();
    await r.lab?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  return r;
}

/** `vmlift ARGS --home HOME --json`, exit 0, parsed. */
export const api = <T>(r: WorkflowRig, args: string[]): Promise<T> => r.proc.api<T>(args);

/** The API directly (what `--json` prints), for polling without a CLI process each time. */
export async function get<T>(r: WorkflowRig, path: string, method = 'GET', body?: unknown): Promise<T> {
  const { port } = JSON.parse(readFileSync(join(r.home, 'api.json'), 'utf8')) as { port: number };
  const token = readFileSync(join(r.home, 'api-token'), 'utf8').trim();
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, ...(body ? { body: JSON.stringify(body) } : {}),
  });
  return await res.json() as T;
}

export async function waitFor(r: WorkflowRig, id: string, pred: (v: View) => boolean, what: string): Promise<View> {
  let v: View | undefined;
  for (const end = Date.now() + 120_000; Date.now() < end; await sleep(150)) {
    v = await get<View>(r, `/v1/jobs/${id}`);
    if (pred(v)) return v;
  }
  throw new Error(`timed out waiting for ${what}: ${JSON.stringify(v)}`);
}

/**
 * Runs a command that must be refused: exit 1 and the `--json` error with its code, message and fix;
 * with `text`, also the text form (`vmlift: error: MESSAGE` and `  fix: FIX` on stderr, exit 1).
 */
export async function refused(r: WorkflowRig, args: string[], code: string, message: RegExp, fix: RegExp, opts: { text?: boolean } = {}): Promise<Refusal> {
  const [j, t] = await Promise.all([vmlift([...args, '--home', r.home, '--json']), opts.text ? vmlift([...args, '--home', r.home]) : undefined]);
  assert.equal(j.code, 1, `${args.join(' ')}: exit code (${j.stdout}${j.stderr})`);
  const error = (JSON.parse(j.stdout) as { error: Refusal['error'] }).error;
  assert.equal(error.code, code, `${args.join(' ')}: ${j.stdout}`);
  assert.match(error.message, message);
  assert.match(error.fix ?? '', fix);
  if (t) {
    assert.equal(t.code, 1);
    assert.match(t.stderr, /^vmlift: error: /);
    assert.ok(t.stderr.includes(error.message) && t.stderr.includes(`  fix: ${error.fix}`), `the text form prints the message and the fix: ${t.stderr}`);
  }
  return { code: j.code, error, stderr: t?.stderr ?? j.stderr };
}

/** The same refusal through the connector API directly (no CLI process): HTTP 4xx with the error's code, message and fix. */
export async function refusedByApi(r: WorkflowRig, method: string, path: string, body: unknown, code: string, message: RegExp, fix: RegExp): Promise<void> {
  const res = await get<{ error?: Refusal['error'] }>(r, path, method, body);
  assert.ok(res.error, `${method} ${path} ${JSON.stringify(body)} was not refused: ${JSON.stringify(res)}`);
  assert.equal(res.error.code, code, JSON.stringify(res.error));
  assert.match(res.error.message, message);
  assert.match(res.error.fix ?? '', fix);
}
