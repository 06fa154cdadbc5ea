/**
 * Inputs for the control API (docs/transfer.md, "Control"): requests to every route, valid and
 * mutated, with ids holding `../`, NUL, unicode or 10^5 characters, bodies of random or mutated JSON,
 * nested deep, not JSON, with wrong content-types and methods, with and without credentials.
 */
import type { Prng } from './prng.ts';
import { deepJson, hostileId, oddNumber, oddString, randomJson } from './hostile-values.ts';
import { WIRE_VERSION } from '../../../src/transfer/wire-version.ts';

export interface ControlSource { sourceId: string; credential: string }
export interface ControlInput { head: Buffer; body: Buffer; kind: string }

const METHODS = ['GET', 'POST', 'DELETE', 'PUT', 'PATCH', 'OPTIONS', 'HEAD', 'TRACE', 'get', 'FOO', 'POST '];

function idInPath(r: Prng, valid: string[]): string {
  if (r.chance(0.5)) return r.pick(valid);
  const id = hostileId(r);
  // mostly percent-encoded (what a client would send); sometimes raw, NUL and unicode bytes included
  return r.chance(0.7) ? encodeURIComponent(id) : id;
}

function disks(r: Prng): unknown {
  if (r.chance(0.7)) return Array.from({ length: r.range(1, 3) }, (_, i) => ({ disk: i, capacity: r.pick([512, 4096, 1 << 20, 8 << 20]) }));
  return r.pick<() => unknown>([
    () => [],
    () => Array.from({ length: 257 }, (_, i) => ({ disk: i, capacity: 512 })),
    () => [{ disk: 0, capacity: oddNumber(r), label: oddString(r) }],
    () => [{ disk: oddNumber(r), capacity: 512 }],
    () => randomJson(r),
    () => Array.from({ length: 10_000 }, () => 0),
  ])();
}

function ranges(r: Prng): unknown {
  if (r.chance(0.6)) return Array.from({ length: r.int(4) }, () => ({ offset: r.int(64) * 4096, length: r.range(1, 16) * 4096 }));
  return r.pick<() => unknown>([
    () => [{ offset: oddNumber(r), length: oddNumber(r) }],
    () => Array.from({ length: 50_000 }, (_, i) => ({ offset: i * 512, length: 512 })),
    () => randomJson(r),
  ])();
}

function beginBody(r: Prng, cycleIds: string[]): Record<string, unknown> {
  const b: Record<string, unknown> = { cycleId: r.chance(0.7) ? r.pick(cycleIds) : hostileId(r), disks: disks(r) };
  if (r.chance(0.3)) b.baseImageId = r.pick([null, '1', '2', hostileId(r), oddNumber(r)]);
  if (r.chance(0.2)) b.baseDisks = r.pick([[0], [null], [0, 1], [oddNumber(r)], randomJson(r)]);
  if (r.chance(0.2)) b.maxImages = oddNumber(r);
  if (r.chance(0.2)) b.estimatedBytes = r.pick([oddNumber(r), 2 ** 52, 1 << 20]);
  return b;
}

function commitBody(r: Prng): Record<string, unknown> {
  const b: Record<string, unknown> = {};
  if (r.chance(0.5)) b.expected = r.chance(0.8) ? [{ disk: r.pick([0, 1, oddNumber(r)]), ranges: ranges(r) }] : randomJson(r);
  if (r.chance(0.5)) b.verify = r.pick([true, false, 'yes', 1]);
  if (r.chance(0.4)) {
    b.sourceDigests = [{
      disk: r.pick([0, 1, oddNumber(r)]),
      ...(r.chance(0.5) ? { sha256: r.pick(['ab', 'x', 'a'.repeat(64), oddString(r)]) } : {}),
      ...(r.chance(0.6) ? { tree: { root: r.pick(['ab'.repeat(32), 'zz', oddString(r)]), ...(r.chance(0.7) ? { ranges: ranges(r) } : {}) } } : {}),
      ...(r.chance(0.1) ? { extents: [] } : {}),
    }];
  }
  if (r.chance(0.3)) b.meta = r.pick<() => unknown>([() => randomJson(r, 4), () => ({ note: oddString(r) }), () => JSON.parse(deepJson(2_000, 'object'))])();
  if (r.chance(0.1)) b.maxImages = oddNumber(r);
  return b;
}

function bodyFor(r: Prng, route: string, cycleIds: string[], code: string): Buffer {
  // whole-body mutations first
  switch (r.int(14)) {
    case 0: return Buffer.from(deepJson(100_000, r.chance(0.5) ? 'array' : 'object'));
    case 1: return r.bytes(r.int(512));
    case 2: return Buffer.from(JSON.stringify(randomJson(r, 4)));
    case 3: return Buffer.from(r.pick(['', '{', 'null', '[]', '"x"', '1e999', '{"a":1}{}', '\ufeff{}', '{"__proto__":{"polluted":1}}']));
    default: break;
  }
  let v: Record<string, unknown>;
  if (route === 'register') v = { sourceId: r.chance(0.3) ? `ctlfz-${r.int(1e6)}` : hostileId(r), code: r.pick([code, '', 'VML-NOPE', oddString(r)]), ...(r.chance(0.3) ? { label: oddString(r) } : {}) };
  else if (route === 'begin') v = beginBody(r, cycleIds);
  else if (route === 'commit') v = commitBody(r);
  else if (route === 'abort') v = r.chance(0.5) ? {} : { disks: disks(r) };
  else v = randomJson(r, 2) as Record<string, unknown>;
  return Buffer.from(JSON.stringify(v));
}

export function controlInput(r: Prng, src: ControlSource, others: ControlSource[], code: string): ControlInput {
  const cycleIds = ['c1', 'c2', 'c3'];
  const imageIds = ['1', '2', '3'];
  const route = r.pick(['register', 'whoami', 'images', 'disks', 'digests', 'begin', 'held', 'commit', 'abort', 'delete', 'store', 'unknown']);
  let method: string; let path: string;
  switch (route) {
    case 'register': method = 'POST'; path = '/v1/register'; break;
    case 'whoami': method = 'GET'; path = '/v1/whoami'; break;
    case 'images': method = 'GET'; path = '/v1/images'; break;
    case 'disks': method = 'GET'; path = '/v1/disks'; break;
    case 'store': method = 'GET'; path = '/v1/store'; break;
    case 'digests': {
      method = 'GET';
      const q = r.chance(0.7) ? `disk=${r.pick(['0', '1', '-1', 'x', '1e3', ''])}&blockSize=${r.pick(['4096', '1048576', '65536', '0', '3', '4097', String(2 ** 40), 'NaN', ''])}` : r.pick(['', 'disk', '%00', 'blockSize=4096&blockSize=8192']);
      path = `/v1/images/${idInPath(r, imageIds)}/digests?${q}`;
      break;
    }
    case 'begin': method = 'POST'; path = '/v1/cycles'; break;
    case 'held': method = 'GET'; path = `/v1/cycles/${idInPath(r, cycleIds)}/held`; break;
    case 'commit': method = 'POST'; path = `/v1/cycles/${idInPath(r, cycleIds)}/commit`; break;
    case 'abort': method = 'POST'; path = `/v1/cycles/${idInPath(r, cycleIds)}/abort`; break;
    case 'delete': method = 'DELETE'; path = `/v1/images/${idInPath(r, imageIds)}`; break;
    default: method = r.pick(METHODS); path = r.pick(['/', '/v1', '/v2/whoami', '/v1/../../etc/passwd', '/v1/cycles/c1/commit/extra', `/v1/${'a/'.repeat(2000)}`, '//v1//whoami', '/v1/images/1/digests/x', '*', `/${encodeURIComponent(hostileId(r))}`]);
  }
  if (r.chance(0.05)) method = r.pick(METHODS);
  const body = method === 'GET' && r.chance(0.8) ? Buffer.alloc(0) : bodyFor(r, route, cycleIds, code);
  const headers: string[] = [`Host: receiver`];
  const auth = r.int(10);
  const who = r.chance(0.9) ? src : r.pick(others.length ? others : [src]);
  // a wire version (transfer/wire-version.ts) on all but the hostile headers: begin requests then reach their parser
  if (auth <= 5) headers.push(`x-vmlift-source: ${who.sourceId}`, `authorization: Bearer ${who.credential}`, `x-vmlift-wire: ${WIRE_VERSION}`);
  else if (auth === 6) headers.push(`x-vmlift-source: ${who.sourceId}`, `authorization: Bearer ${r.pick(['forged', '', 'x'.repeat(10_000)])}`);
  else if (auth === 7) headers.push(`x-vmlift-source: ${hostileId(r).slice(0, 20_000)}`, `authorization: Bearer ${who.credential}`);
  else if (auth === 8) headers.push(`x-vmlift-source: ${who.sourceId}`, `x-vmlift-source: other`, `authorization: Basic ${who.credential}`);
  if (r.chance(0.8)) headers.push(`content-type: ${r.chance(0.8) ? 'application/json' : r.pick(['text/html', 'multipart/form-data; boundary=x', 'application/json; charset=utf-16', '\x7f'])}`);
  const lenKind = r.int(100);
  if (lenKind === 0) headers.push(`content-length: ${body.length + r.range(1, 10)}`); // claims more: the server waits, we time out the request
  else if (lenKind === 1) headers.push('transfer-encoding: chunked');
  else if (lenKind === 2) headers.push(`content-length: ${body.length}`, `content-length: ${body.length + 1}`);
  else headers.push(`content-length: ${body.length}`);
  const chunked = lenKind === 1;
  const head = Buffer.from(`${method} ${path} HTTP/1.1\r\n${headers.join('\r\n')}\r\n\r\n`, route !== 'unknown' && r.chance(0.02) ? 'utf8' : 'latin1');
  const sent = chunked ? Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n0\r\n\r\n')]) : body;
  return { head, body: sent, kind: `${route}${lenKind === 0 ? '+short-body' : ''}` };
}
