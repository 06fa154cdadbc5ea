/**
 * The SOAP client against a hostile HTTPS server posing as vCenter (issue 12 §4): entity expansion
 * and external entities, huge and trickled answers, deep nesting and a wrong content-type, on both
 * parsing paths (node-soap: VimSession.call; lean-xml: retrieveProperties over callText). Each is
 * refused with VC_BAD_RESPONSE (or VC_TIMEOUT) naming the cause, within a bounded time and memory.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:https';
import type { ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { X509Certificate } from 'node:crypto';
import { generate } from 'selfsigned';
import { VimSession, methods } from '../../src/vsphere/index.ts';
import { mor } from '../../src/vsphere/convert.ts';
import { fixture } from './replay-server.ts';

const MiB = 1 << 20;
type Hostile = (res: ServerResponse) => void;

const ENV_OPEN = '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" ' +
  'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>';
const ENV_CLOSE = '</soapenv:Body></soapenv:Envelope>';
const xml = (s: string): Hostile => (res) => { res.writeHead(200, { 'content-type': 'text/xml; charset=utf-8' }).end(s); };

/** The answer of each parsing path wrapped around `inner` (a string value inside the returned object). */
const viewAnswer = (inner: string, prolog = '') => prolog + ENV_OPEN.replace(/^<\?xml[^>]*\?>/, '') +
  `<CreateContainerViewResponse xmlns="urn:vim25"><returnval type="ContainerView">${inner}</returnval></CreateContainerViewResponse>` + ENV_CLOSE;
const propsAnswer = (inner: string, prolog = '') => prolog + ENV_OPEN.replace(/^<\?xml[^>]*\?>/, '') +
  '<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachine">vm-1</obj>' +
  `<propSet><name>name</name><val xsi:type="xsd:string">${inner}</val></propSet></objects></returnval></RetrievePropertiesExResponse>` + ENV_CLOSE;

const LAUGHS = '<!DOCTYPE lolz [<!ENTITY lol "lol">' +
  Array.from({ length: 9 }, (_, i) => `<!ENTITY lol${i + 1} "${`&lol${i || ''};`.repeat(10)}">`).join('') + ']>';
const XXE = '<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>';
const nest = (n: number) => '<a>'.repeat(n) + 'x' + '</a>'.repeat(n);

/** Streams `total` bytes of a well-formed-looking answer in 64 KiB pieces, as long as the client reads. */
const huge = (total: number, sent: { bytes: number }): Hostile => (res) => {
  res.writeHead(200, { 'content-type': 'text/xml' });
  const piece = Buffer.alloc(64 * 1024, 'x');
  res.write(ENV_OPEN + '<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachine">vm-1</obj><propSet><name>n</name><val>');
  const pump = () => {
    while (sent.bytes < total) {
      sent.bytes += piece.length;
      if (!res.write(piece)) { res.once('drain', pump); return; }
    }
    res.end('</val></propSet></objects></returnval></RetrievePropertiesExResponse>' + ENV_CLOSE);
  };
  res.on('error', () => undefined);
  pump();
};

/** One byte every `everyMs`: never silent long enough for the per-packet timeout. */
const trickle = (everyMs: number): Hostile => (res) => {
  res.writeHead(200, { 'content-type': 'text/xml' });
  const t = setInterval(() => { if (res.destroyed) clearInterval(t); else res.write(' '); }, everyMs);
  res.on('close', () => clearInterval(t));
};

interface Hostage { url: string; thumbprint: string; set(op: string, h: Hostile | undefined): void; close(): Promise<void> }

async function startHostile(): Promise<Hostage> {
  const pems = await generate([{ name: 'commonName', value: '127.0.0.1' }], { keySize: 2048, algorithm: 'sha256' });
  const thumbprint = new X509Certificate(pems.cert).fingerprint256.replace(/:/g, '');
  const hostile = new Map<string, Hostile>();
  const server: Server = createServer({ key: pems.private, cert: pems.cert }, (req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => { body += c; });
    req.on('end', () => {
      if (req.method === 'GET') { res.writeHead(200, { 'content-type': 'text/xml' }).end(fixture('versions-8.0.3.xml')); return; }
      const op = /<(?:[\w-]+:)?Body[^>]*>\s*<(?:[\w-]+:)?(\w+)/.exec(body)?.[1] ?? '';
      const h = hostile.get(op);
      if (h) { h(res); return; }
      const file = op === 'RetrieveServiceContent' ? 'service-content.xml' : op === 'Login' ? 'login.xml' : op === 'Logout' ? 'logout.xml' : undefined;
      if (!file) { res.writeHead(500, { 'content-type': 'text/plain' }).end(`no answer for ${op}`); return; }
      res.writeHead(200, { 'content-type': 'text/xml; charset=utf-8', ...(op === 'Login' ? { 'set-cookie': 'vmware_soap_session="h"; Path=/' } : {}) })
        .end(fixture(file));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}/sdk`, thumbprint,
    set: (op, h) => { if (h) hostile.set(op, h); else hostile.delete(op); },
    close: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}

/** The limits the tests run with: a small size cap so a refused answer is cheap, short timeouts. */
const LIMITS = { maxResponseBytes: 16 * MiB, deadlineMs: 3000 };

let h: Hostage;
let s: VimSession;
before(async () => {
  h = await startHostile();
  s = await VimSession.connect({ server: h.url, user: 'u', password: 'p', trust: { thumbprint: h.thumbprint }, timeoutMs: 2000, limits: LIMITS });
});
after(async () => { await s.close(); await h.close(); });

const viaSoap = () => s.call('CreateContainerView', { _this: mor('ViewManager', 'ViewManager'), container: mor('Folder', 'group-d1'), type: ['VirtualMachine'], recursive: true });
const viaLean = () => methods.retrieveProperties(s, [{ propSet: [{ type: 'VirtualMachine', pathSet: ['name'] }], objectSet: [{ obj: mor('VirtualMachine', 'vm-1') }] }]);

/** Runs `f`, expects a refusal with `code` and a message matching `re`, in under `ms`; returns the time taken. */
async function refused(f: () => Promise<unknown>, code: string, re: RegExp, ms = 5000): Promise<number> {
  const t0 = Date.now();
  await assert.rejects(f(), (e: Error & { code?: string; fix?: string }) => {
    assert.equal(e.code, code, `${e.code}: ${e.message}`);
    assert.match(e.message, re);
    assert.ok(e.fix, 'the error says what to do');
    assert.doesNotMatch(e.message, /root:x:0:0|lollollol/, 'no entity was expanded into the message');
    return true;
  });
  const took = Date.now() - t0;
  assert.ok(took < ms, `refused in ${took} ms`);
  return took;
}

describe('the SOAP client against a hostile server posing as vCenter', () => {
  it('answers that are well-formed still pass on both paths (the double is sound)', async () => {
    h.set('CreateContainerView', xml(viewAnswer('view-7')));
    h.set('RetrievePropertiesEx', xml(propsAnswer('vm one')));
    assert.equal((await viaSoap()).returnval.$value ?? (await viaSoap()).returnval, 'view-7');
    const [o] = await viaLean();
    assert.equal(o!.props.name.$value ?? o!.props.name, 'vm one');
  });

  for (const [path, run, answer, op] of [
    ['node-soap', viaSoap, viewAnswer, 'CreateContainerView'],
    ['lean-xml', viaLean, propsAnswer, 'RetrievePropertiesEx'],
  ] as const) {
    describe(`${path} path (${op})`, () => {
      after(() => h.set(op, undefined));
      it('billion laughs: refused for its DTD, nothing expanded', async () => {
        h.set(op, xml(answer('&lol9;', `<?xml version="1.0"?>${LAUGHS}`)));
        const m0 = process.memoryUsage().rss;
        await refused(run, 'VC_BAD_RESPONSE', /DTD.*never expanded/);
        assert.ok(process.memoryUsage().rss - m0 < 32 * MiB);
      });
      it('external entity (XXE): refused, the file is never read', async () => {
        h.set(op, xml(answer('&xxe;', `<?xml version="1.0"?>${XXE}`)));
        await refused(run, 'VC_BAD_RESPONSE', /DTD/);
      });
      it('an entity used without any DTD stays text or is refused, never expanded', async () => {
        h.set(op, xml(answer('&lol9;&xxe;')));
        const v = await run().then((r) => JSON.stringify(r), (e: Error & { code?: string }) => { assert.equal(e.code, 'VC_BAD_RESPONSE', e.message); return e.message; });
        assert.doesNotMatch(v, /lollol|root:/);
      });
      it('a DOCTYPE hidden after a comment is refused too', async () => {
        h.set(op, xml(answer('x', `<?xml version="1.0"?><!-- hi -->${XXE}`)));
        await refused(run, 'VC_BAD_RESPONSE', /DTD/);
      });
      it('deep nesting (100,000 levels): refused, no stack overflow', async () => {
        h.set(op, xml(answer(nest(100_000))));
        await refused(run, 'VC_BAD_RESPONSE', /nest deeper than 256 levels/);
      });
      it('nesting within the cap still parses', async () => {
        h.set(op, xml(answer(nest(200))));
        await run();
      });
      it('a wrong content-type (a portal\'s HTML login page) is refused, naming it', async () => {
        h.set(op, (res) => { res.writeHead(200, { 'content-type': 'text/html' }).end('<html><body><form>Sign in</form></body></html>'); });
        await refused(run, 'VC_BAD_RESPONSE', /content-type "text\/html", not XML/);
      });
      it('JSON where XML belongs is refused', async () => {
        h.set(op, (res) => { res.writeHead(200, { 'content-type': 'application/json' }).end('{"value":[]}'); });
        await refused(run, 'VC_BAD_RESPONSE', /content-type "application\/json"/);
      });
      it('an answer beyond the size cap is refused while it streams, memory bounded', async () => {
        const sent = { bytes: 0 };
        h.set(op, huge(1024 * MiB, sent));
        global.gc?.();
        // JS heap plus Buffers: what this process holds for the answer (RSS keeps what an earlier test freed)
        const held = () => { const m = process.memoryUsage(); return m.heapUsed + m.arrayBuffers; };
        const m0 = held();
        let peak = 0;
        const t = setInterval(() => { peak = Math.max(peak, held() - m0); }, 2);
        try {
          await refused(run, 'VC_BAD_RESPONSE', /larger than the limit of 16777216 bytes/, 10_000);
        } finally { clearInterval(t); }
        peak = Math.max(peak, held() - m0);
        console.log(`# ${path}: refused a 1 GiB answer after the server wrote ${(sent.bytes / MiB).toFixed(0)} MiB; peak heap+buffers growth ${(peak / MiB).toFixed(1)} MiB (cap 16 MiB)`);
        assert.ok(sent.bytes < 1024 * MiB, 'the transfer was stopped, not read to its end');
        assert.ok(peak < 64 * MiB, `heap+buffers grew ${(peak / MiB).toFixed(1)} MiB, bound 64 MiB (cap 16 MiB)`);
      });
      it('a Content-Length beyond the cap is refused before the body is read', async () => {
        h.set(op, (res) => { res.writeHead(200, { 'content-type': 'text/xml', 'content-length': String(64 * MiB) }); res.write('<'); });
        await refused(run, 'VC_BAD_RESPONSE', /Content-Length 67108864/);
      });
      it('an answer trickled a byte at a time hits the whole-call deadline', async () => {
        h.set(op, trickle(200));
        await refused(run, 'VC_TIMEOUT', /did not complete its answer within 3000 ms/, 6000);
      });
      it('headers that never come hit the timeout', async () => {
        h.set(op, () => undefined);
        await refused(run, 'VC_TIMEOUT', /went silent for 2000 ms/);
      });
    });
  }

  it('the session still works after every refusal', async () => {
    h.set('CreateContainerView', xml(viewAnswer('view-8')));
    const r = await viaSoap();
    assert.equal(r.returnval.$value ?? r.returnval, 'view-8');
    h.set('CreateContainerView', undefined);
  });
});

describe('lean-xml on its own (behind the transport checks)', async () => {
  const { parseXml, depthOver } = await import('../../src/vsphere/lean-xml.ts');
  it('refuses a DTD anywhere and caps nesting; depthOver finds the first too-deep tag', () => {
    assert.throws(() => parseXml(`${LAUGHS}<r>&lol9;</r>`), /DTDs are not accepted/);
    assert.throws(() => parseXml(`<r>${XXE}</r>`), /DTDs are not accepted/);
    assert.throws(() => parseXml(nest(300)), /nest deeper than 256 levels/);
    assert.equal(JSON.stringify(parseXml('<r>&lol9;</r>')), '{"r":"&lol9;"}', 'an unknown entity stays text');
    assert.doesNotThrow(() => parseXml(nest(256)));
    assert.equal(depthOver(nest(256), 256), undefined);
    assert.equal(depthOver(nest(257), 256), 256 * 3);
    assert.equal(depthOver(`<a>${'<b/>'.repeat(1000)}<!-- <c><c><c> --></a>`, 1), undefined, 'self-closing tags and comments do not nest');
  });
});
