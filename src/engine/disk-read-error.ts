import type { BlockSource } from '../source/types.ts';
import { wrapSource } from '../source/wrap.ts';
import { CodedError, errorReport } from '../util/errors.ts';
import type { SnapshotDisk } from './services.ts';

/**
 * A read of a VM disk that failed once its reader's own retries were spent: the cause's code, its
 * message after the disk's key and label (a reader's URI names a socket or a datastore path, not the
 * disk an administrator knows), and the cause's fix followed by the job's resume.
 */
export class DiskReadError extends CodedError {
  readonly diskKey: number;
  constructor(disk: Pick<SnapshotDisk, 'key' | 'label'>, vmRef: string, jobId: string, cause: unknown) {
    const why = errorReport(cause);
    const resume = `then \`vmlift job resume ${jobId}\``;
    super(why.code, `disk ${disk.key} (${disk.label}) of ${vmRef}: ${why.message}`, {
      fix: why.fix ? `${why.fix}; ${resume}` : resume, transient: why.transient ?? false, cause,
    });
    this.diskKey = disk.key;
  }
}

/** `source` whose failed reads are DiskReadErrors naming `disk`. */
export function namingDisk<S extends BlockSource>(source: S, disk: Pick<SnapshotDisk, 'key' | 'label'>, vmRef: string, jobId: string): S {
  const named = (e: unknown): never => { throw e instanceof RangeError ? e : new DiskReadError(disk, vmRef, jobId, e); };
  return wrapSource(source, {
    read: (offset, length) => source.read(offset, length).catch(named),
    readInto: source.readInto && ((offset, target) => source.readInto!(offset, target).catch(named)),
  });
}
