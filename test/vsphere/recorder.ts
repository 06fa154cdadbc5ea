/**
 * A recording HTTPS proxy in front of the lab vCenter, with the lab's own certificate (so the
 * client pins the lab's thumbprint unchanged): every /sdk exchange is kept, for fixtures captured
 * from OUR lab (fixtures/vsphere/lab-*.xml, written by test/vsphere/capture-lab.ts).
 */
import { createServer, type Server } from 'node:https';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { Agent, request } from 'undici';
import type { Lab } from '../../lab/lab.ts';

export interface Exchange { op: string; request: string; status: number; response: string }
export interface Recorder { url: string; exchanges: Exchange[]; close(): Promise<void> }

const opOf = (body: string) => /<(?:[\w-]+:)?Body[^>]*>\s*<(?:[\w-]+:)?(\w+)/.exec(body)?.[1] ?? '';

export async function startRecorder(lab: Lab): Promise<Recorder> {
  const upstream = new URL(lab.url);
  const agent = new Agent({ connect: { ca: lab.certPem } });
  const exchanges: Exchange[] = [];
  const server: Server = createServer({ key: readFileSync(join(lab.dir, 'key.pem')), cert: lab.certPem }, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const headers: Record<string, string> = {};
      for (const h of ['content-type', 'soapaction', 'cookie']) if (req.headers[h]) headers[h] = String(req.headers[h]);
      request(`${upstream.origin}${req.url}`, { method: req.method as 'POST', headers, body: req.method === 'POST' ? body : undefined, dispatcher: agent })
        .then(async (up) => {
          const text = await up.body.text();
          if (req.url?.startsWith('/sdk') && req.method === 'POST') exchanges.push({ op: opOf(body), request: body, status: up.statusCode, response: text });
          const out: Record<string, string | string[]> = {};
          for (const h of ['content-type', 'set-cookie']) { const v = up.headers[h]; if (v !== undefined) out[h] = v as string | string[]; }
          res.writeHead(up.statusCode, out).end(text);
        }, (e: Error) => { res.writeHead(502).end(e.message); });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}/sdk`, exchanges,
    close: async () => { server.closeAllConnections(); await new Promise<void>((r) => server.close(() => r())); await agent.close(); },
  };
}
