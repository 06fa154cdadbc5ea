/**
 * The agent's state directory:
 *   state.json                   { openCycle }: the cycle to resume after a crash
 *   manifests/img-<id>/          block digests of a committed image (meta.json, disk-<n>.bin)
 *   manifests/new-<cycle>/       digests being written by the open cycle (promoted after commit)
 */
import { mkdir, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic, fsyncDir } from '../util/fsync.ts';
import { assertId } from '../util/ids.ts';
import { UserError } from '../util/errors.ts';

export interface OpenCycleState {
  cycleId: string;
  baseImageId: string | null;
  startedAt: string;
}

export interface ManifestMeta {
  imageId: string;
  cycleId: string;
  committedAt: string;
  blockSize: number;
  capacities: number[];
}

export class AgentState {
  readonly dir: string;
  private constructor(dir: string) { this.dir = dir; }

  static async open(dir: string): Promise<AgentState> {
    try {
      await mkdir(join(dir, 'manifests'), { recursive: true, mode: 0o700 });
    } catch (e) {
      throw new UserError('STATE_DIR', `cannot create the agent state directory ${dir}: ${(e as Error).message}`,
        'pass a writable --state-dir', { cause: e });
    }
    return new AgentState(dir);
  }

  get credentialPath(): string { return join(this.dir, 'credential.json'); }

  async openCycle(): Promise<OpenCycleState | null> {
    try {
      const s = JSON.parse(await readFile(join(this.dir, 'state.json'), 'utf8')) as { openCycle?: OpenCycleState | null };
      return s.openCycle ?? null;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new UserError('STATE_CORRUPT', `the agent state file ${join(this.dir, 'state.json')} is unreadable: ${(e as Error).message}`,
        'remove it; the next cycle starts over and compares against the receiver\'s newest image', { cause: e });
    }
  }

  async setOpenCycle(c: OpenCycleState | null): Promise<void> {
    await writeFileAtomic(join(this.dir, 'state.json'), `${JSON.stringify({ openCycle: c }, null, 2)}\n`);
  }

  imageManifestDir(imageId: string): string { return join(this.dir, 'manifests', `img-${assertId(imageId, 'image id')}`); }
  newManifestDir(cycleId: string): string { return join(this.dir, 'manifests', `new-${assertId(cycleId, 'cycle id')}`); }

  /** The cached manifest of `imageId` when it matches the image the receiver describes. */
  async cachedManifest(expect: Omit<ManifestMeta, 'blockSize' | 'capacities'>, blockSize: number): Promise<ManifestMeta | null> {
    try {
      const m = JSON.parse(await readFile(join(this.imageManifestDir(expect.imageId), 'meta.json'), 'utf8')) as ManifestMeta;
      if (m.imageId !== expect.imageId || m.cycleId !== expect.cycleId || m.committedAt !== expect.committedAt || m.blockSize !== blockSize) return null;
      for (let d = 0; d < m.capacities.length; d++) {
        const st = await stat(this.manifestPath(expect.imageId, d));
        if (st.size !== Math.ceil(m.capacities[d]! / blockSize) * 16) return null;
      }
      return m;
    } catch {
      return null;
    }
  }

  manifestPath(imageId: string, disk: number): string { return join(this.imageManifestDir(imageId), `disk-${disk}.bin`); }

  async prepareNewManifestDir(cycleId: string): Promise<string> {
    const d = this.newManifestDir(cycleId);
    await rm(d, { recursive: true, force: true });
    await mkdir(d, { recursive: true, mode: 0o700 });
    return d;
  }

  /** Make a fully written manifest dir the cache of `meta.imageId`, then drop every other cached manifest. */
  async promoteManifest(fromDir: string, meta: ManifestMeta): Promise<void> {
    await writeFileAtomic(join(fromDir, 'meta.json'), `${JSON.stringify(meta, null, 2)}\n`);
    const target = this.imageManifestDir(meta.imageId);
    await rm(target, { recursive: true, force: true });
    await rename(fromDir, target);
    await fsyncDir(join(this.dir, 'manifests'));
    await this.pruneManifests(meta.imageId);
  }

  async pruneManifests(keepImageId: string): Promise<void> {
    const keep = `img-${keepImageId}`;
    for (const name of await readdir(join(this.dir, 'manifests'))) {
      if (name !== keep) await rm(join(this.dir, 'manifests', name), { recursive: true, force: true });
    }
  }
}
