/**
 * The connector's durable record of agent sources, in `<home>/agents/`:
 *   <agent>.json   { id, tokenSha256, createdAt }: who may connect as the agent (the token itself is
 *                  given once to the user, never kept)
 *   jobs.json      { <job>: { agentId, devices, images } }: which agent and devices an agent job reads,
 *                  and the receiver's images the agent last reported
 * Files are read on each use, so `connector add-agent` works while the connector runs.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, writeSync } from 'node:fs';
import { writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { UserError } from '../util/errors.ts';
import { assertId, isValidId } from '../util/ids.ts';
import type { ImageInfo } from '../model/images.ts';

export interface AgentRecord { id: string; tokenSha256: string; createdAt: string }
export interface AgentBinding { agentId: string; devices: string[]; images?: ImageInfo[] }

/** Small JSON files written whole: temp file, fsync, rename. */
function writeFileAtomicSync(path: string, data: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  const fd = openSync(tmp, 'w', 0o600);
  try { writeSync(fd, data); fsyncSync(fd); } finally { closeSync(fd); }
  renameSync(tmp, path);
}

const sha = (s: string): Buffer => createHash('sha256').update(s).digest();

export class AgentRegistry {
  constructor(readonly dir: string) { mkdirSync(dir, { recursive: true, mode: 0o700 }); }

  /** A new token for the agent (replacing an earlier one), written to `tokenFile` with mode 0600. */
  async addAgent(id: string, tokenFile: string): Promise<AgentRecord> {
    assertId(id, 'agent id');
    const token = randomBytes(32).toString('base64url');
    const rec: AgentRecord = { id, tokenSha256: sha(token).toString('hex'), createdAt: new Date().toISOString() };
    try {
      await writeFile(tokenFile, `${token}\n`, { mode: 0o600, flag: 'w' });
    } catch (e) {
      throw new UserError('TOKEN_FILE', `cannot write the agent token to ${tokenFile}: ${(e as Error).message}`, 'pass a writable --token-out path', { cause: e });
    }
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    writeFileAtomicSync(join(this.dir, `${id}.json`), `${JSON.stringify(rec, null, 2)}\n`);
    return rec;
  }

  get(id: string): AgentRecord | undefined {
    if (!isValidId(id)) return undefined;
    try { return JSON.parse(readFileSync(join(this.dir, `${id}.json`), 'utf8')) as AgentRecord; } catch { return undefined; }
  }

  list(): AgentRecord[] {
    return readdirSync(this.dir).filter((f) => f.endsWith('.json') && f !== 'jobs.json').map((f) => this.get(f.slice(0, -5))).filter((r): r is AgentRecord => !!r);
  }

  /** The token is the agent's: both sides hashed, compared in constant time. */
  authenticate(id: string | undefined, authorization: string | undefined): boolean {
    const rec = id ? this.get(id) : undefined;
    const given = authorization?.startsWith('Bearer ') ? authorization.slice(7) : '';
    const want = rec ? Buffer.from(rec.tokenSha256, 'hex') : Buffer.alloc(32);
    return timingSafeEqual(sha(given), want.length === 32 ? want : Buffer.alloc(32)) && !!rec && given.length > 0;
  }

  binding(jobId: string): AgentBinding | undefined { return this.bindings()[jobId]; }

  bind(jobId: string, b: AgentBinding): void { this.writeBindings({ ...this.bindings(), [jobId]: b }); }

  unbind(jobId: string): void {
    const all = this.bindings();
    delete all[jobId];
    this.writeBindings(all);
  }

  setImages(jobId: string, images: ImageInfo[]): void {
    const all = this.bindings();
    if (all[jobId]) this.writeBindings({ ...all, [jobId]: { ...all[jobId], images } });
  }

  jobsOf(agentId: string): string[] {
    return Object.entries(this.bindings()).filter(([, b]) => b.agentId === agentId).map(([j]) => j);
  }

  private bindings(): Record<string, AgentBinding> {
    try { return JSON.parse(readFileSync(join(this.dir, 'jobs.json'), 'utf8')) as Record<string, AgentBinding>; } catch { return {}; }
  }

  private writeBindings(all: Record<string, AgentBinding>): void {
    writeFileAtomicSync(join(this.dir, 'jobs.json'), `${JSON.stringify(all, null, 2)}\n`);
  }
}
