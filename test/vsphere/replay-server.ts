/**
 * A local vCenter stand-in that replays hand-written SOAP fixtures (fixtures/vsphere/): an HTTPS
 * server on 127.0.0.1 with a self-signed certificate, answering each SOAP request by its operation
 * name. The client connects with the pinned thumbprint, so the real session code runs unchanged.
 */
import { createServer, type Server } from 'node:https';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';
import { generate } from 'selfsigned';

export const FIXTURES = fileURLToPath(new URL('../../fixtures/vsphere/', import.meta.url));
export const fixture = (name: string): string => readFileSync(FIXTURES + name, 'utf8');

/** One fixture file, a sequence of them consumed one per call (the last one repeats), or a choice by the request body. */
export type Answer = string | string[] | ((body: string) => string);

export interface ReplayOptions {
  /** Operation name → fixture file(s). RetrieveServiceContent, Login and Logout have defaults. */
  answers?: Record<string, Answer>;
  /** The fixture served at /sdk/vimServiceVersions.xml; null answers 404. */
  versions?: string | null;
}

export interface ReplayedRequest { op: string; soapAction: string | undefined; cookie: string | undefined; body: string }

export interface Replay {
  url: string;
  thumbprint: string;
  requests: ReplayedRequest[];
  /** How many times an operation was called. */
  count(op: string): number;
  close(): Promise<void>;
}

const DEFAULTS: Record<string, Answer> = {
  RetrieveServiceContent: 'service-content.xml', Login: 'login.xml', Logout: 'logout.xml',
  CreateContainerView: 'container-view.xml', DestroyView: 'destroy-view.xml',
};

/** The first element inside the SOAP Body, without its prefix. */
function operationOf(body: string): string {
  const m = /<(?:[\w-]+:)?Body[^>]*>\s*<(?:[\w-]+:)?([\w]+)/.exec(body);
  return m ? m[1]! : '';
}

export async function startReplay(o: ReplayOptions = {}): Promise<Replay> {
  const answers = { ...DEFAULTS, ...o.answers };
  const versions = o.versions === undefined ? 'versions-8.0.3.xml' : o.versions;
  const calls = new Map<string, number>();
  const requests: ReplayedRequest[] = [];
  const pems = await generate([{ name: 'commonName', value: '127.0.0.1' }], { keySize: 2048, algorithm: 'sha256' });
  const thumbprint = new X509Certificate(pems.cert).fingerprint256.replace(/:/g, '');
  let logins = 0;
  const server: Server = createServer({ key: pems.private, cert: pems.cert }, (req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => { body += c; });
    req.on('end', () => {
      if (req.method === 'GET' && req.url === '/sdk/vimServiceVersions.xml') {
        if (versions === null) { res.writeHead(404).end(); return; }
        res.writeHead(200, { 'content-type': 'text/xml' }).end(fixture(versions));
        return;
      }
      const op = operationOf(body);
      requests.push({ op, soapAction: req.headers.soapaction as string | undefined, cookie: req.headers.cookie, body });
      const n = calls.get(op) ?? 0;
      calls.set(op, n + 1);
      const a = answers[op];
      if (a === undefined) {
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`replay: no fixture for ${op}`);
        return;
      }
      const file = typeof a === 'function' ? a(body) : Array.isArray(a) ? a[Math.min(n, a.length - 1)]! : a;
      const text = fixture(file);
      const headers: Record<string, string> = { 'content-type': 'text/xml; charset=utf-8' };
      if (op === 'Login' && !/Fault>/.test(text)) headers['set-cookie'] = `vmware_soap_session="replay-${++logins}"; Path=/; HttpOnly; Secure;`;
      res.writeHead(/<(?:[\w-]+:)?Fault>/.test(text) ? 500 : 200, headers).end(text);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `https://127.0.0.1:${port}/sdk`, thumbprint, requests,
    count: (op) => calls.get(op) ?? 0,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}
