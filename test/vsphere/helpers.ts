import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startLab, type Lab, type StartLabOptions } from '../../lab/lab.ts';
import { VCenter } from '../../src/vsphere/index.ts';

export async function labFixture(o: Partial<StartLabOptions> = {}): Promise<{ lab: Lab; dir: string; cleanup: () => Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-vsphere-'));
  const lab = await startLab({ dir, vms: 4, ...o });
  return { lab, dir, cleanup: async () => { await lab.stop(); rmSync(dir, { recursive: true, force: true }); } };
}

export function connect(lab: Lab, thumbprint = lab.thumbprint): Promise<VCenter> {
  return VCenter.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint }, timeoutMs: 20_000 });
}

const bin = fileURLToPath(new URL('../../bin/vmlift', import.meta.url));

/** Runs bin/vmlift; returns exit code, stdout, stderr. */
export function vmlift(args: string[], env: Record<string, string | undefined> = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(bin, args, { env: { ...process.env, VMLIFT_SERVER: undefined, VMLIFT_USER: undefined, VMLIFT_PASSWORD: undefined,
      VMLIFT_PASSWORD_FILE: undefined, VMLIFT_THUMBPRINT: undefined, ...env } as NodeJS.ProcessEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    p.stdout.on('data', (b) => { stdout += b; });
    p.stderr.on('data', (b) => { stderr += b; });
    p.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

export function labEnv(lab: Lab): Record<string, string> {
  return { VMLIFT_SERVER: lab.url, VMLIFT_USER: lab.user, VMLIFT_PASSWORD_FILE: lab.passwordFile, VMLIFT_THUMBPRINT: lab.thumbprint };
}

import { Agent, request } from 'undici';

/** GET a datastore file range through /folder with the session's cookie (what the http-datastore transport does). */
export async function folderRead(lab: Lab, url: string, cookie: string | undefined, offset: number, length: number): Promise<{ status: number; body: Buffer }> {
  const agent = new Agent({ connect: { ca: lab.certPem } });
  try {
    const res = await request(url, { dispatcher: agent, headers: { ...(cookie ? { cookie } : {}), range: `bytes=${offset}-${offset + length - 1}` } });
    return { status: res.statusCode, body: Buffer.from(await res.body.arrayBuffer()) };
  } finally {
    await agent.close();
  }
}

/** GET a range of the lab's own view of a disk at a snapshot (what VDDK or NBD reads of it return; lab-internal). */
export async function viewRead(lab: Lab, vm: string, disk: number, snapshot: string | undefined, offset: number, length: number): Promise<{ status: number; body: Buffer }> {
  const { url, headers } = lab.viewUrl(vm, disk, snapshot);
  const agent = new Agent({ connect: { ca: lab.certPem } });
  try {
    const res = await request(url, { dispatcher: agent, headers: { ...headers, range: `bytes=${offset}-${offset + length - 1}` } });
    return { status: res.statusCode, body: Buffer.from(await res.body.arrayBuffer()) };
  } finally {
    await agent.close();
  }
}
