/** Readers for node-soap's parsed values: every leaf is a string, repeated elements may be one object or an array. */

export interface MoRef { type: string; value: string }

export function arr<T = any>(x: unknown): T[] {
  if (x === undefined || x === null) return [];
  return (Array.isArray(x) ? x : [x]) as T[];
}

export function str(x: unknown): string | undefined {
  if (x === undefined || x === null) return undefined;
  if (typeof x === 'object') {
    const v = (x as Record<string, unknown>).$value;
    return v === undefined || v === null ? undefined : String(v);
  }
  return String(x);
}

export function num(x: unknown): number | undefined {
  const s = str(x);
  if (s === undefined || s === '') return undefined;
  const n = Number(s);
  return Number.isFinite(n) ? n : undefined;
}

export function bool(x: unknown): boolean | undefined {
  const s = str(x);
  if (s === undefined) return undefined;
  return s === 'true' || s === '1';
}

function stripPrefix(t: string): string {
  const i = t.lastIndexOf(':');
  return i < 0 ? t : t.slice(i + 1);
}

/** The xsi:type of a value, whatever prefix the server bound the XMLSchema-instance namespace to. */
export function xsiType(x: unknown): string | undefined {
  if (!x || typeof x !== 'object') return undefined;
  const attrs = (x as Record<string, any>).attributes;
  if (!attrs) return undefined;
  const common = attrs['xsi:type'];
  if (common !== undefined) return stripPrefix(String(common));
  for (const [k, v] of Object.entries(attrs)) {
    // xsi:type always carries a prefix; a bare "type" is a managed object reference's own attribute.
    if (k.endsWith(':type')) return stripPrefix(String(v));
  }
  return undefined;
}

export function moref(x: unknown): MoRef | undefined {
  if (!x || typeof x !== 'object') return undefined;
  const o = x as Record<string, any>;
  const type = o.attributes?.type;
  const value = o.$value;
  return type && value !== undefined ? { type: String(type), value: String(value) } : undefined;
}

/** A managed object reference as node-soap serializes it: <_this type="T">value</_this>. */
export function mor(type: string, value: string): Record<string, unknown> {
  return { attributes: { type }, $value: value };
}

export function morOf(r: MoRef): Record<string, unknown> {
  return mor(r.type, r.value);
}

/** An xsd:anyType value that must carry its type (extraConfig values). */
export function xsdString(value: string): Record<string, unknown> {
  return { attributes: { 'xmlns:xsd': 'http://www.w3.org/2001/XMLSchema', 'xsi:type': 'xsd:string' }, $value: value };
}

/** The payload of an ArrayOfX wrapper (<val xsi:type="ArrayOfVirtualDevice"><VirtualDevice>…). */
export function arrayOf<T = any>(x: unknown): T[] {
  if (!x || typeof x !== 'object') return [];
  const o = x as Record<string, unknown>;
  const t = xsiType(x);
  if (t?.startsWith('ArrayOf')) {
    const key = Object.keys(o).find((k) => k !== 'attributes');
    return key ? arr<T>(o[key]) : [];
  }
  return arr<T>(x);
}

const VC_ESCAPES: Record<string, string> = { '%25': '%', '%2f': '/', '%5c': '\\' };

/**
 * An inventory name as a person wrote it. vCenter escapes '%', '/' and '\' in names (as %25, %2f,
 * %5c), and a '/' arrives escaped twice (%252f); only those escapes are decoded, until none is left.
 */
export function unescapeName(name: string): string {
  let prev: string;
  let cur = name;
  do {
    prev = cur;
    cur = prev.replace(/%(25|2f|5c)/gi, (m) => VC_ESCAPES[m.toLowerCase()]!);
  } while (cur !== prev);
  return cur;
}
