/**
 * Control API (port 8080, HTTP+JSON over TLS). Every route but /v1/register needs the headers
 * `x-vmlift-source` and `authorization: Bearer <credential>`; a source sees only its own images.
 *
 *   POST /v1/register                       {sourceId, code, label?} → {sourceId, credential}
 *   GET  /v1/whoami                         → {sourceId, dataPort}
 *   GET  /v1/images                         → {images: ImageInfo[]}
 *   GET  /v1/disks                          → {imageId, disks} of the newest image
 *   GET  /v1/images/:id/digests?disk=&blockSize=  → octet stream: 16 bytes (SHA-256 prefix) per block
 *   POST /v1/cycles                         {cycleId, disks, baseImageId?, baseDisks?, maxImages?} → {cycleId, baseImageId, baseDisks?, held}
 *   GET  /v1/cycles/:id/held                → {held}
 *   POST /v1/cycles/:id/commit              {meta?, expected?, verify?, sourceDigests?, maxImages?} → ImageInfo
 *   POST /v1/cycles/:id/abort               {disks?} → {}
 *   DELETE /v1/images/:id                   → {deleted}
 *   GET  /v1/store                          → StoreFiguresResponse: free/total bytes of the data folder, the store's totals and dedup ratio (store-wide)
 *   POST /v1/drills                         {imageId?} → DrillReport (queued; inspect, convert and boot-test run in the background)
 *   GET  /v1/drills                         → {drills}
 *   GET  /v1/drills/:id                     → DrillReport
 *   GET  /v1/drills/:id/screenshot          → image/png of the VGA console at the end of the boot
 *
 * The bodies are typed in transfer/contract.ts; requests.ts checks the incoming ones.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { Logger } from '../util/log.ts';
import { errorMessage, errorReport } from '../util/errors.ts';
import { assertId, isValidId } from '../util/ids.ts';
import type { ImageStore } from '../store/types.ts';
import { DIGEST_BLOCK_SIZES, HDR_SOURCE, SAME_VERSION_FIX } from '../transfer/protocol.ts';
import { HDR_WIRE, WIRE_VERSION, declaredWireVersion, wireVersionRefusal } from '../transfer/wire-version.ts';
import { authenticate, registerSource } from './identity.ts';
import { Refusal, refusalFrom, type OpenCycles } from './open-cycles.ts';
import { drillsUnavailable, type DrillRunner } from './drills.ts';
import { StoreFigures } from './store-figures.ts';
import { parseAbortCycle, parseBeginCycle, parseCommitCycle, parseRegister, parseStartDrill, type JsonObject } from './requests.ts';
import type {
  AbortCycleResponse, DeleteImageResponse, DisksResponse, DrillsResponse, ErrorResponse, HeldResponse, ImagesResponse, RegisterResponse, StoreFiguresResponse, WhoamiResponse,
} from '../transfer/contract.ts';

/**
 * Request bodies: at most this many bytes per route (register is read before any credential is
 * checked: it stays small; a commit lists every range sent, its digest tree ranges and the meta), and
 * all bodies being read at once together at most BODIES_IN_FLIGHT, so that memory does not grow with
 * the number of clients (docs/reliability.md, "Fuzzing the receiver").
 */
export const BODY_LIMITS = { register: 64 * 1024, cycle: 1024 * 1024, commit: 64 * 1024 * 1024, drill: 64 * 1024 };
export const BODIES_IN_FLIGHT = 128 * 1024 * 1024;

export interface ControlContext {
  dataDir: string; store: ImageStore; cycles: OpenCycles; log: Logger; dataPort: () => number; drills?: DrillRunner;
  /** The cached figures of GET /v1/store (default: one kept by this handler, told of the commits and deletes it serves). */
  figures?: StoreFigures;
}

/** Bytes of request bodies held by requests being read (one per receiver). */
class BodyBudget { used = 0; }

/** `size.bytes` is set to the body's length. */
async function readJson(req: IncomingMessage, limit: number, budget: BodyBudget, size?: { bytes: number }): Promise<JsonObject> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > limit) throw tooLarge(limit);
  const chunks: Buffer[] = [];
  let n = 0;
  try {
    for await (const c of req) {
      const len = (c as Buffer).length;
      n += len;
      if (n > limit) throw tooLarge(limit);
      if (budget.used + len > BODIES_IN_FLIGHT) {
        throw new Refusal(503, 'BUSY', `the receiver is reading ${BODIES_IN_FLIGHT} bytes of other request bodies`, 'retry in a few seconds', { transient: true });
      }
      budget.used += len;
      chunks.push(c as Buffer);
    }
  } catch (e) {
    if (e instanceof Refusal) throw e;
    throw new Refusal(400, 'BAD_REQUEST', `the request body broke off after ${n} bytes (${errorMessage(e)})`, 'send the request again');
  } finally {
    budget.used -= chunks.reduce((k, c) => k + c.length, 0);
  }
  if (size) size.bytes = n;
  if (n === 0) return {};
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as JsonObject;
  } catch { /* below */ }
  throw new Refusal(400, 'BAD_REQUEST', 'request body is not a JSON object', SAME_VERSION_FIX);
}

const tooLarge = (limit: number) => new Refusal(413, 'BAD_REQUEST', `request body exceeds ${limit} bytes`, SAME_VERSION_FIX);

function send(res: ServerResponse, status: number, body: unknown): void {
  const b = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': b.length });
  res.end(b);
}

export function controlHandler(context: ControlContext): (req: IncomingMessage, res: ServerResponse) => void {
  const bodies = new BodyBudget();
  const ctx: ControlContext & { figures: StoreFigures } = { ...context, figures: context.figures ?? new StoreFigures(context.store, context.dataDir) };
  return (req, res) => {
    const url = new URL(req.url ?? '/', 'https://receiver');
    const route = `${req.method} ${url.pathname}`;
    let sourceId: string | undefined;
    handle(ctx, bodies, req, res, url, (s) => { sourceId = s; }).catch((e: unknown) => {
      const r = refusalFrom(e);
      if (r) {
        ctx.log.warn({ route, sourceId, status: r.status, errCode: r.code, reason: r.message }, 'control request refused');
        if (!res.headersSent) send(res, r.status, { error: errorReport(r) } satisfies ErrorResponse);
        else res.destroy();
      } else {
        ctx.log.error({ route, sourceId, err: errorMessage(e) }, 'control request failed');
        if (!res.headersSent) send(res, 500, { error: { code: 'INTERNAL', message: `receiver error: ${errorMessage(e)}` } } satisfies ErrorResponse);
        else res.destroy();
      }
    });
  };
}

async function handle(ctx: ControlContext & { figures: StoreFigures }, bodies: BodyBudget, req: IncomingMessage, res: ServerResponse, url: URL, setSource: (s: string) => void): Promise<void> {
  const parts = url.pathname.split('/').filter(Boolean);
  if (parts[0] !== 'v1') throw new Refusal(404, 'NOT_FOUND', `no route ${url.pathname}`, SAME_VERSION_FIX);
  const m = req.method;

  if (m === 'POST' && parts[1] === 'register' && parts.length === 2) {
    const body = parseRegister(await readJson(req, BODY_LIMITS.register, bodies));
    const sourceId = body.sourceId;
    setSource(sourceId);
    const { credential } = await registerSource(ctx.dataDir, sourceId, body.code, body.label ?? null)
      .catch((e: unknown) => { const r = refusalFrom(e); throw r ? new Refusal(r.code === 'ALREADY_REGISTERED' ? 409 : 403, r.code, r.message, r.fix) : e; });
    ctx.log.info({ sourceId }, 'source registered');
    return send(res, 200, { sourceId, credential } satisfies RegisterResponse);
  }

  const hdr = req.headers[HDR_SOURCE];
  const sourceId = Array.isArray(hdr) ? hdr[0] : hdr;
  if (!sourceId) throw new Refusal(401, 'AUTH', 'missing credential: no source id header', 'register the source with an activation code first');
  if (!isValidId(sourceId)) assertId(sourceId, 'source id');
  setSource(sourceId);
  const auth = req.headers.authorization;
  const cred = auth?.startsWith('Bearer ') ? auth.slice(7) : undefined;
  if (!cred) throw new Refusal(401, 'AUTH', `missing credential for source ${sourceId}`, 'pass the credential file written when the source registered');
  if (!(await authenticate(ctx.dataDir, sourceId, cred))) {
    throw new Refusal(401, 'AUTH', `wrong credential for source ${sourceId}`, 'use the credential file written when this source registered, or register a new source id with an activation code');
  }

  if (m === 'GET' && parts[1] === 'whoami' && parts.length === 2) return send(res, 200, { sourceId, dataPort: ctx.dataPort(), wireVersion: WIRE_VERSION } satisfies WhoamiResponse);
  if (m === 'GET' && parts[1] === 'images' && parts.length === 2) return send(res, 200, { images: await listImages(ctx.store, sourceId) } satisfies ImagesResponse);
  if (m === 'GET' && parts[1] === 'store' && parts.length === 2) return send(res, 200, await ctx.figures.get() satisfies StoreFiguresResponse);
  if (m === 'GET' && parts[1] === 'disks' && parts.length === 2) {
    const imgs = await listImages(ctx.store, sourceId);
    const last = imgs[imgs.length - 1];
    return send(res, 200, { imageId: last?.imageId ?? null, disks: last?.disks ?? [] } satisfies DisksResponse);
  }
  if (m === 'DELETE' && parts[1] === 'images' && parts.length === 3) {
    // A source may delete its own images (job delete --remove-images); refused while an export or verify uses one.
    const imageId = assertId(parts[2], 'image id');
    await ctx.store.removeImage(sourceId, imageId).catch((e: unknown) => {
      const code = (e as { code?: string }).code;
      if (code === 'NOT_FOUND') throw new Refusal(404, 'NOT_FOUND', `source ${sourceId} has no image ${imageId}`, 'list the images with `vmlift image ls`');
      if (code === 'PINNED' || code === 'BUSY') throw new Refusal(409, code, errorMessage(e), 'retry once the export or verify has finished', { transient: true });
      throw e;
    });
    ctx.figures.changed();
    const gc = await ctx.store.gc();
    ctx.figures.changed();
    ctx.log.info({ sourceId, imageId, removedBytes: gc.removedBytes, mergedPacks: gc.mergedPacks ?? 0 }, 'image deleted by its source');
    return send(res, 200, { deleted: imageId } satisfies DeleteImageResponse);
  }
  if (m === 'GET' && parts[1] === 'images' && parts[3] === 'digests' && parts.length === 4) {
    return digests(ctx, res, sourceId, assertId(parts[2], 'image id'), url.searchParams);
  }
  if (parts[1] === 'cycles') {
    if (m === 'POST' && parts.length === 2) {
      // a sender of another wire version stops here, before it reads or sends anything
      const wire = declaredWireVersion(req.headers[HDR_WIRE]);
      if (wire !== WIRE_VERSION) { const r = wireVersionRefusal(wire); throw new Refusal(409, r.code, r.message, r.fix); }
    }
    if (m === 'POST' && parts.length === 2) return send(res, 200, await ctx.cycles.begin(sourceId, parseBeginCycle(await readJson(req, BODY_LIMITS.cycle, bodies))));
    const cycleId = assertId(parts[2], 'cycle id');
    if (m === 'GET' && parts[3] === 'held' && parts.length === 4) return send(res, 200, { held: await ctx.cycles.held(sourceId, cycleId) } satisfies HeldResponse);
    if (m === 'POST' && parts[3] === 'commit' && parts.length === 4) {
      const size = { bytes: 0 };
      const body = parseCommitCycle(await readJson(req, BODY_LIMITS.commit, bodies, size));
      ctx.log.info({ sourceId, cycleId, bodyBytes: size.bytes }, 'commit requested');
      try {
        return send(res, 200, await ctx.cycles.commit(sourceId, cycleId, body));
      } finally { ctx.figures.changed(); }
    }
    if (m === 'POST' && parts[3] === 'abort' && parts.length === 4) {
      await ctx.cycles.abort(sourceId, cycleId, parseAbortCycle(await readJson(req, BODY_LIMITS.cycle, bodies)));
      ctx.figures.changed();
      return send(res, 200, {} satisfies AbortCycleResponse);
    }
  }
  if (parts[1] === 'drills') return drills(ctx, bodies, req, res, sourceId, parts.slice(2));
  throw new Refusal(404, 'NOT_FOUND', `no route ${m} ${url.pathname}`, SAME_VERSION_FIX);
}

async function drills(ctx: ControlContext, bodies: BodyBudget, req: IncomingMessage, res: ServerResponse, sourceId: string, rest: string[]): Promise<void> {
  const m = req.method;
  const runner = ctx.drills;
  if (!runner) throw new Refusal(501, drillsUnavailable().code, drillsUnavailable().message, drillsUnavailable().fix);
  if (m === 'POST' && rest.length === 0) {
    const body = parseStartDrill(await readJson(req, BODY_LIMITS.drill, bodies));
    return send(res, 200, await runner.start(sourceId, body.imageId));
  }
  if (m === 'GET' && rest.length === 0) return send(res, 200, { drills: await runner.list(sourceId) } satisfies DrillsResponse);
  const drillId = assertId(rest[0], 'drill id');
  if (m === 'GET' && rest.length === 1) return send(res, 200, await runner.get(sourceId, drillId));
  if (m === 'GET' && rest.length === 2 && rest[1] === 'screenshot') {
    const report = await runner.get(sourceId, drillId);
    if (!report.screenshot) throw new Refusal(404, 'NOT_FOUND', `drill ${drillId} has no console screenshot (state ${report.state})`, 'a screenshot is taken when the boot test ran');
    const png = await readFile(runner.screenshotPath(sourceId, drillId));
    res.writeHead(200, { 'content-type': 'image/png', 'content-length': png.length });
    res.end(png);
    return;
  }
  throw new Refusal(404, 'NOT_FOUND', `no route ${m} /v1/drills/${rest.join('/')}`, SAME_VERSION_FIX);
}

async function listImages(store: ImageStore, sourceId: string) {
  return (await store.listSources()).includes(sourceId) ? store.listImages(sourceId) : [];
}

async function digests(ctx: ControlContext, res: ServerResponse, sourceId: string, imageId: string, q: URLSearchParams): Promise<void> {
  const blockSize = Number(q.get('blockSize'));
  const disk = Number(q.get('disk') ?? '0');
  if (!Number.isInteger(blockSize) || blockSize < DIGEST_BLOCK_SIZES.min || blockSize > DIGEST_BLOCK_SIZES.max || (blockSize & (blockSize - 1)) !== 0) {
    throw new Refusal(400, 'BAD_REQUEST', `blockSize ${q.get('blockSize')} must be a power of two in ${DIGEST_BLOCK_SIZES.min}..${DIGEST_BLOCK_SIZES.max}`);
  }
  const img = await ctx.store.getImage(sourceId, imageId);
  const spec = img.disks.find((d) => d.disk === disk);
  if (!spec) throw new Refusal(404, 'BAD_DISK', `image ${imageId} has no disk ${q.get('disk')}`);
  const batch = Math.max(blockSize, 4 * 1024 * 1024);
  const zeroDigest = createHash('sha256').update(Buffer.alloc(blockSize)).digest().subarray(0, 16);
  const zero = Buffer.alloc(blockSize);
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-vmlift-blocks': String(Math.ceil(spec.capacity / blockSize)) });
  // (chunk names are tree digests, not the SHA-256 this route gives: every block size reads the image)
  for (let off = 0; off < spec.capacity; off += batch) {
    const len = Math.min(batch, spec.capacity - off);
    const buf = await ctx.store.readImage(sourceId, imageId, disk, off, len);
    const out = Buffer.allocUnsafe(Math.ceil(len / blockSize) * 16);
    for (let i = 0, k = 0; i < len; i += blockSize, k += 16) {
      const b = buf.subarray(i, Math.min(len, i + blockSize));
      const d = b.length === blockSize && b.equals(zero) ? zeroDigest : createHash('sha256').update(b).digest();
      d.copy(out, k, 0, 16);
    }
    if (!res.write(out)) await new Promise<void>((r) => { res.once('drain', r); res.once('close', r); });
    if (res.destroyed) return;
  }
  res.end();
}
