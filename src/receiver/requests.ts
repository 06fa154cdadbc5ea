/**
 * The control API's request bodies, checked: parsed JSON in, the contract's typed bodies
 * (transfer/contract.ts) out, or a Refusal saying what is wrong. Every typed field is built from a
 * field that was checked here; nothing is cast.
 */
import { assertId } from '../util/ids.ts';
import { SAME_VERSION_FIX } from '../transfer/protocol.ts';
import type { AbortCycleRequest, BeginCycleRequest, CommitCycleRequest, RegisterRequest, StartDrillRequest } from '../transfer/contract.ts';
import { Refusal, disksRequired } from './open-cycles.ts';
import type { Range } from '../model/ranges.ts';
import type { DiskSpec, HeldRanges, SourceDigest } from '../model/images.ts';

export type JsonObject = Record<string, unknown>;

const isObject = (v: unknown): v is JsonObject => !!v && typeof v === 'object' && !Array.isArray(v);
const badRequest = (message: string, fix?: string) => new Refusal(400, 'BAD_REQUEST', message, fix);

export function parseRegister(body: JsonObject): RegisterRequest {
  return {
    sourceId: assertId(body.sourceId, 'source id'),
    // an absent code is refused by registerSource (CODE_UNKNOWN), like a wrong one
    code: typeof body.code === 'string' ? body.code : '',
    label: typeof body.label === 'string' ? body.label.slice(0, 200) : null,
  };
}

export function parseBeginCycle(body: JsonObject): BeginCycleRequest {
  const out: BeginCycleRequest = { cycleId: assertId(body.cycleId, 'cycle id'), disks: checkDisks(body.disks) };
  const maxImages = checkMaxImages(body.maxImages);
  if (maxImages !== undefined) out.maxImages = maxImages;
  if (body.baseImageId !== undefined) out.baseImageId = body.baseImageId === null ? null : assertId(body.baseImageId, 'image id');
  if (body.baseDisks !== undefined) out.baseDisks = checkBaseDisks(body.baseDisks, out.disks.length);
  if (body.estimatedBytes !== undefined && body.estimatedBytes !== null) {
    if (!isCount(body.estimatedBytes)) throw badRequest('estimatedBytes must be a whole number of bytes >= 0', SAME_VERSION_FIX);
    out.estimatedBytes = body.estimatedBytes;
  }
  return out;
}

export function parseCommitCycle(body: JsonObject): CommitCycleRequest {
  const out: CommitCycleRequest = { meta: isObject(body.meta) ? checkMeta(body.meta) : {}, verify: body.verify === true };
  const maxImages = checkMaxImages(body.maxImages);
  if (maxImages !== undefined) out.maxImages = maxImages;
  if (Array.isArray(body.expected)) out.expected = body.expected.map(checkHeld);
  // digests matter only when the sender asks for verification
  if (out.verify && Array.isArray(body.sourceDigests)) out.sourceDigests = body.sourceDigests.map((d, i) => checkSourceDigest(d, i, out.expected));
  return out;
}

/** Deepest nesting a commit's meta may have: it is kept in image.json, and serialising it recurses. */
export const META_MAX_DEPTH = 64;

/** The meta as sent, unless it nests deeper than META_MAX_DEPTH (walked without recursion). */
function checkMeta(meta: JsonObject): JsonObject {
  const stack: [unknown, number][] = [[meta, 1]];
  while (stack.length) {
    const [v, depth] = stack.pop()!;
    if (depth > META_MAX_DEPTH) throw badRequest(`meta nests deeper than ${META_MAX_DEPTH} levels`, SAME_VERSION_FIX);
    if (v && typeof v === 'object') for (const x of Object.values(v)) if (x && typeof x === 'object') stack.push([x, depth + 1]);
  }
  return meta;
}

export function parseStartDrill(body: JsonObject): StartDrillRequest {
  return body.imageId === undefined || body.imageId === null ? {} : { imageId: assertId(body.imageId, 'image id') };
}

export function parseAbortCycle(body: JsonObject): AbortCycleRequest {
  return body.disks === undefined ? {} : { disks: checkDisks(body.disks) };
}

function checkDisks(disks: unknown): DiskSpec[] {
  if (!Array.isArray(disks) || disks.length === 0 || disks.length > 256) throw disksRequired();
  return disks.map((d: unknown, i) => {
    const x = (isObject(d) ? d : {}) as Partial<Record<keyof DiskSpec, unknown>>;
    const capacity = x.capacity;
    if (x.disk !== i || typeof capacity !== 'number' || !Number.isSafeInteger(capacity) || capacity <= 0 || capacity % 512 !== 0) {
      throw badRequest(`disk ${i}: needs disk=${i} and a capacity that is a positive multiple of 512`, 'number disks 0..n-1 and give their sizes in bytes');
    }
    return { disk: i, capacity, ...(typeof x.label === 'string' ? { label: x.label.slice(0, 200) } : {}) };
  });
}

function checkBaseDisks(v: unknown, disks: number): (number | null)[] {
  const fix = 'give one entry per disk: the base image\'s disk number it starts from, or null for an empty disk';
  if (!Array.isArray(v) || v.length !== disks) throw badRequest(`baseDisks needs ${disks} entries, one per disk`, fix);
  return v.map((b: unknown, i) => {
    if (b === null) return null;
    if (typeof b !== 'number' || !Number.isSafeInteger(b) || b < 0 || b > 255) throw badRequest(`baseDisks[${i}] must be a disk number or null`, fix);
    return b;
  });
}

function checkMaxImages(n: unknown): number | undefined {
  if (n === undefined || n === null) return undefined;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 10) throw badRequest(`maxImages ${String(n)} is outside 1..10`, 'keep between 1 and 10 images');
  return n;
}

const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

function checkRange(r: unknown, what: string): Range {
  if (!isObject(r) || !isCount(r.offset) || !isCount(r.length)) throw badRequest(`${what}: a range needs a whole offset and length >= 0`);
  return { offset: r.offset, length: r.length };
}

function checkHeld(h: unknown, i: number): HeldRanges {
  if (!isObject(h) || !isCount(h.disk) || !Array.isArray(h.ranges)) throw badRequest(`expected[${i}] needs a disk number and a list of ranges`);
  const disk = h.disk;
  return { disk, ranges: h.ranges.map((r) => checkRange(r, `expected ranges of disk ${disk}`)) };
}

/**
 * The shape only (a tree without ranges gets the disk's `expected` ranges); whether the disk and
 * ranges lie in the image is checked against the image.
 */
function checkSourceDigest(d: unknown, i: number, expected: HeldRanges[] | undefined): SourceDigest {
  if (!isObject(d) || !isCount(d.disk)) throw badRequest(`sourceDigests[${i}] needs a disk number`);
  const out: SourceDigest = { disk: d.disk };
  if (d.sha256 !== undefined) {
    if (typeof d.sha256 !== 'string') throw badRequest(`sourceDigests[${i}].sha256 is not a hex string`);
    out.sha256 = d.sha256;
  }
  if (d.extents !== undefined) {
    throw badRequest(`sourceDigests[${i}].extents is the form of an older vmlift (one digest per read); this receiver takes a digest tree`, SAME_VERSION_FIX);
  }
  if (d.tree !== undefined) {
    const tr = d.tree;
    if (!isObject(tr) || typeof tr.root !== 'string' || !/^[0-9a-f]{64}$/i.test(tr.root) || !(tr.ranges === undefined || Array.isArray(tr.ranges))) {
      throw badRequest(`sourceDigests[${i}].tree needs a root (64 hex digits) and ranges, if any, as a list`, SAME_VERSION_FIX);
    }
    let ranges: Range[];
    if (Array.isArray(tr.ranges)) ranges = tr.ranges.map((r) => checkRange(r, `sourceDigests[${i}].tree`));
    else {
      const exp = expected?.find((e) => e.disk === d.disk);
      if (!exp) throw badRequest(`sourceDigests[${i}].tree has no ranges and the commit expects none of disk ${d.disk}`, SAME_VERSION_FIX);
      ranges = exp.ranges;
    }
    for (let k = 0; k < ranges.length; k++) {
      const prev = ranges[k - 1];
      if (ranges[k]!.length === 0 || (prev && ranges[k]!.offset < prev.offset + prev.length)) {
        throw badRequest(`sourceDigests[${i}].tree.ranges must be sorted, disjoint and not empty (range ${k})`, SAME_VERSION_FIX);
      }
    }
    out.tree = { ranges, root: tr.root.toLowerCase() };
  }
  return out;
}
