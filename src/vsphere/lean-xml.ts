/**
 * A small, fast XML reader and writer for the SOAP calls whose answers are large (the
 * PropertyCollector's). It gives the same shapes node-soap gives and convert.ts reads: element
 * names without their prefix; an element with children is an object (a repeated child an array,
 * attributes under `attributes`); a text-only element is its text, or `{ attributes, $value }`
 * when it has attributes. xmlns declarations are dropped. No DTDs (SOAP forbids them), so no
 * entities but the five predefined ones and character references; nesting is capped.
 */

/** Deeper nesting than vim25 ever has (a snapshot tree of 32 levels is about 70 elements deep). */
export const MAX_XML_DEPTH = 256;

const ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

function decode(s: string): string {
  if (s.indexOf('&') < 0) return s;
  return s.replace(/&(#x[0-9a-fA-F]+|#\d+|\w+);/g, (m, e: string) => {
    if (e[0] === '#') return String.fromCodePoint(e[1] === 'x' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10));
    return ENTITIES[e] ?? m;
  });
}

interface Frame { name: string; attrs: Record<string, string> | null; obj: Record<string, any> | null; text: string }

function localName(qname: string): string {
  const i = qname.indexOf(':');
  return i < 0 ? qname : qname.slice(i + 1);
}

function add(parent: Frame, name: string, value: unknown): void {
  const o = parent.obj ?? (parent.obj = {});
  const prev = o[name];
  if (prev === undefined) o[name] = value;
  else if (Array.isArray(prev)) prev.push(value);
  else o[name] = [prev, value];
}

function close(f: Frame): unknown {
  if (f.obj) {
    if (f.attrs) f.obj.attributes = f.attrs;
    return f.obj;
  }
  if (f.attrs) return f.text === '' ? { attributes: f.attrs } : { attributes: f.attrs, $value: f.text };
  return f.text;
}

/** The attributes in xml[from, to) of a start tag, without xmlns declarations; null when none. */
function attributes(xml: string, from: number, to: number): Record<string, string> | null {
  let attrs: Record<string, string> | null = null;
  let i = from;
  while (i < to) {
    const eq = xml.indexOf('=', i);
    if (eq < 0 || eq >= to) break;
    const k = xml.slice(i, eq).trim();
    let q = eq + 1;
    while (q < to && xml.charCodeAt(q) !== 34 && xml.charCodeAt(q) !== 39) q++;
    const close = xml.indexOf(xml[q]!, q + 1);
    if (q >= to || close < 0 || close > to) throw new Error('XML: malformed attribute');
    if (k !== 'xmlns' && !k.startsWith('xmlns:')) (attrs ??= {})[k] = decode(xml.slice(q + 1, close));
    i = close + 1;
  }
  return attrs;
}

/** Elements named `element` whose attributes `keep` refuses are skipped whole, unparsed (they never appear in the result). */
export interface Prune { element: string; keep(attrs: Record<string, string> | null): boolean }

/** The index just past the end tag matching the start tag `qname` whose '>' is at `gt`. */
function skipElement(xml: string, qname: string, gt: number): number {
  const open = `<${qname}`, close = `</${qname}>`;
  let depth = 1;
  let i = gt + 1;
  while (depth > 0) {
    const c = xml.indexOf(close, i);
    if (c < 0) throw new Error(`XML: <${qname}> is not closed`);
    for (let o = xml.indexOf(open, i); o >= 0 && o < c; o = xml.indexOf(open, o + 1)) {
      const k = xml.charCodeAt(o + open.length);
      if ((k === 32 || k === 62 || k === 9 || k === 10 || k === 13) && xml.charCodeAt(xml.indexOf('>', o) - 1) !== 47) depth++;
    }
    depth--;
    i = c + close.length;
  }
  return i;
}

/** Parses a whole document; returns the root element's value (see the shapes above), keyed by its name. */
export function parseXml(xml: string, prune?: Prune, maxDepth = MAX_XML_DEPTH): Record<string, unknown> {
  const root: Frame = { name: '', attrs: null, obj: null, text: '' };
  const stack: Frame[] = [root];
  let top = root;
  let i = 0;
  const n = xml.length;
  while (i < n) {
    const lt = xml.indexOf('<', i);
    if (lt < 0) break;
    if (lt > i && top.obj === null) top.text += decode(xml.slice(i, lt));
    const c = xml.charCodeAt(lt + 1);
    if (c === 47 /* / */) {
      const gt = xml.indexOf('>', lt);
      if (gt < 0) throw new Error('XML: unterminated end tag');
      const f = stack.pop()!;
      if (stack.length === 0) throw new Error('XML: unbalanced end tag');
      if (localName(xml.slice(lt + 2, gt).trim()) !== f.name) throw new Error(`XML: </${xml.slice(lt + 2, gt)}> closes <${f.name}>`);
      top = stack[stack.length - 1]!;
      add(top, f.name, close(f));
      i = gt + 1;
      continue;
    }
    if (c === 63 /* ? */) { i = xml.indexOf('?>', lt) + 2; if (i < 2) throw new Error('XML: unterminated declaration'); continue; }
    if (c === 33 /* ! */) {
      if (xml.startsWith('<!--', lt)) { const e = xml.indexOf('-->', lt); if (e < 0) throw new Error('XML: unterminated comment'); i = e + 3; continue; }
      if (xml.startsWith('<![CDATA[', lt)) {
        const e = xml.indexOf(']]>', lt);
        if (e < 0) throw new Error('XML: unterminated CDATA');
        if (top.obj === null) top.text += xml.slice(lt + 9, e);
        i = e + 3;
        continue;
      }
      throw new Error('XML: DTDs are not accepted');
    }
    const gt = xml.indexOf('>', lt);
    if (gt < 0) throw new Error('XML: unterminated start tag');
    let end = gt;
    const selfClosing = xml.charCodeAt(gt - 1) === 47;
    if (selfClosing) end = gt - 1;
    let j = lt + 1;
    while (j < end) { const k = xml.charCodeAt(j); if (k === 32 || k === 9 || k === 10 || k === 13) break; j++; }
    const qname = xml.slice(lt + 1, j);
    const name = localName(qname);
    const attrs = j < end ? attributes(xml, j, end) : null;
    if (prune && name === prune.element && !prune.keep(attrs)) {
      i = selfClosing ? gt + 1 : skipElement(xml, qname, gt);
      continue;
    }
    // An element's first child makes it an object: text seen so far was indentation.
    if (top.obj === null && top !== root) { top.obj = {}; top.text = ''; }
    const f: Frame = { name, attrs, obj: null, text: '' };
    if (selfClosing) add(top, name, close(f));
    else {
      if (stack.length > maxDepth) throw new Error(`XML: elements nest deeper than ${maxDepth} levels (at offset ${lt})`);
      stack.push(f);
      top = f;
    }
    i = gt + 1;
  }
  if (stack.length !== 1) throw new Error('XML: unexpected end of document');
  return root.obj ?? {};
}

/**
 * The offset of the first start tag nested deeper than `limit`, or undefined: a scan without
 * parsing, for answers another parser (node-soap) reads.
 */
export function depthOver(xml: string, limit: number): number | undefined {
  let depth = 0;
  for (let lt = xml.indexOf('<'); lt >= 0; lt = xml.indexOf('<', lt + 1)) {
    const c = xml.charCodeAt(lt + 1);
    if (c === 47 /* / */) { depth--; continue; }
    if (c === 63 /* ? */) continue;
    if (c === 33 /* ! */) {
      const end = xml.startsWith('<!--', lt) ? xml.indexOf('-->', lt) : xml.startsWith('<![CDATA[', lt) ? xml.indexOf(']]>', lt) : lt;
      if (end < 0) return undefined;
      lt = end;
      continue;
    }
    const gt = xml.indexOf('>', lt);
    if (gt < 0) return undefined;
    if (xml.charCodeAt(gt - 1) !== 47 && ++depth > limit) return lt;
    lt = gt;
  }
  return undefined;
}

/** The first element inside a SOAP Body (e.g. RetrievePropertiesExResponse), or undefined. */
export function soapBody(xml: string, prune?: Prune): Record<string, any> | undefined {
  const env = parseXml(xml, prune)['Envelope'] as Record<string, any> | undefined;
  const body = env?.['Body'];
  if (!body || typeof body !== 'object') return undefined;
  const key = Object.keys(body).find((k) => k !== 'attributes');
  const v = key ? body[key] : undefined;
  return v && typeof v === 'object' ? v : v === undefined ? undefined : {};
}

const escapeText = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const escapeAttr = (s: string) => escapeText(s).replace(/"/g, '&quot;');

/** Writes a value in node-soap's input shape ({ attributes, $value }, arrays repeat the element) as XML elements. */
export function toXml(name: string, v: unknown): string {
  if (v === undefined || v === null) return '';
  if (Array.isArray(v)) return v.map((x) => toXml(name, x)).join('');
  if (typeof v !== 'object') return `<${name}>${escapeText(String(v))}</${name}>`;
  const o = v as Record<string, unknown>;
  let attrs = '';
  for (const [k, a] of Object.entries((o.attributes ?? {}) as Record<string, unknown>)) attrs += ` ${k}="${escapeAttr(String(a))}"`;
  if (o.$value !== undefined) return `<${name}${attrs}>${escapeText(String(o.$value))}</${name}>`;
  let inner = '';
  for (const [k, x] of Object.entries(o)) if (k !== 'attributes') inner += toXml(k, x);
  return `<${name}${attrs}>${inner}</${name}>`;
}

/** A SOAP 1.1 request envelope for one vim25 method; `args` in node-soap's input shape, in the WSDL's element order. */
export function soapRequest(method: string, args: Record<string, unknown>): string {
  let inner = '';
  for (const [k, v] of Object.entries(args)) inner += toXml(k, v);
  return '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"' +
    ' xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vim25="urn:vim25">' +
    `<soapenv:Body><${method} xmlns="urn:vim25">${inner}</${method}></soapenv:Body></soapenv:Envelope>`;
}
