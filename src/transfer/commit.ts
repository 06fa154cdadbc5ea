/**
 * Committing a cycle: the request body, and the retries around it. A commit whose answer was lost
 * already made the image; a receiver restarted meanwhile has the cycle in its store only, and the
 * cycle is begun again once before the commit is repeated.
 */
import { UserError } from '../util/errors.ts';
import { ConnectError } from './connect.ts';
import { RemoteError } from './control-client.ts';
import type { CommitCycleRequest, CommitRequest } from './contract.ts';
import { Backoff } from './reconnect.ts';
import type { HeldRanges, ImageInfo, SourceDigest } from '../model/images.ts';

/** The commit body: digests go along (and are verified) only when the sender checks sums. */
export function commitBody(o: CommitRequest, expected: HeldRanges[], checksum: boolean, maxImages: number | undefined): CommitCycleRequest {
  const body: CommitCycleRequest = { meta: o.meta ?? {}, expected, verify: checksum && !!o.sourceDigests };
  if (o.sourceDigests && checksum) body.sourceDigests = o.sourceDigests.map((d) => withoutExpectedRanges(d, expected));
  if (maxImages !== undefined) body.maxImages = maxImages;
  return body;
}

/** A tree over exactly the disk's expected ranges goes without them: the receiver takes them from `expected`. */
function withoutExpectedRanges(d: SourceDigest, expected: HeldRanges[]): SourceDigest {
  const ranges = d.tree?.ranges;
  const exp = expected.find((e) => e.disk === d.disk)?.ranges;
  if (!ranges || !exp || ranges.length !== exp.length || ranges.some((r, i) => r.offset !== exp[i]!.offset || r.length !== exp[i]!.length)) return d;
  return { ...d, tree: { root: d.tree!.root } };
}

export interface CommitAttempts {
  /** Send the commit once. */
  send(): Promise<ImageInfo>;
  /** The image this cycle made, if the receiver has one. */
  findCommitted(): Promise<ImageInfo | undefined>;
  /** Begin the cycle again (the receiver reopens it from its store). */
  reopen(): Promise<void>;
  /** Network failures are retried this long. */
  timeoutMs: number;
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
}

/** Commit, retrying network failures with backoff; refusals by the receiver end it. */
export async function commitWithRetries(a: CommitAttempts): Promise<ImageInfo> {
  const now = a.now ?? Date.now;
  const sleep = a.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const started = now();
  const backoff = new Backoff();
  let reopened = false;
  for (;;) {
    try {
      return await a.send();
    } catch (e) {
      if (e instanceof RemoteError && e.code === 'CYCLE_NOT_OPEN' && !reopened) {
        const img = await a.findCommitted();
        if (img) return img;
        reopened = true;
        await a.reopen();
        continue;
      }
      if ((e instanceof UserError && !(e instanceof ConnectError)) || now() - started > a.timeoutMs) throw e;
      await sleep(backoff.next());
    }
  }
}
