/**
 * Every error code src/ raises: the code literals given to a CodedError (or a subclass, found by
 * following `extends` from CodedError), to `super(...)` in a subclass, and the codes of the vSphere
 * fault table. A code computed at run time from another error (CycleError, DiskReadError,
 * RemoteError) is that error's code, listed where it is raised.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';

export interface CodeUse { code: string; file: string }

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return e.name === 'wsdl' ? [] : sources(p);
    return e.name.endsWith('.ts') ? [p] : [];
  });
}

export function errorCodesIn(root: string): CodeUse[] {
  const files = sources(join(root, 'src')).map((f) => ({ f, text: readFileSync(f, 'utf8') }));
  const classes = new Set(['CodedError']);
  for (let grew = true; grew;) {
    grew = false;
    for (const { text } of files) {
      for (const m of text.matchAll(/class (\w+) extends (\w+)/g)) {
        if (classes.has(m[2]!) && !classes.has(m[1]!)) { classes.add(m[1]!); grew = true; }
      }
    }
  }
  const names = [...classes].join('|');
  const raise = new RegExp(`new (?:${names})\\(\\s*(?:\\d+\\s*,\\s*)?['"]([A-Z][A-Z0-9_]+)['"]`, 'g');
  const superCall = /super\(\s*['"]([A-Z][A-Z0-9_]+)['"]/g;
  const out: CodeUse[] = [];
  for (const { f, text } of files) {
    const file = relative(root, f);
    for (const m of text.matchAll(raise)) out.push({ code: m[1]!, file });
    if ([...text.matchAll(/class (\w+) extends (\w+)/g)].some((m) => classes.has(m[1]!))) {
      for (const m of text.matchAll(superCall)) out.push({ code: m[1]!, file });
    }
    const table = /const FAULT_CODES[^=]*=\s*\{([^}]*)\}/s.exec(text);
    if (table) for (const m of table[1]!.matchAll(/:\s*'([A-Z][A-Z0-9_]+)'/g)) out.push({ code: m[1]!, file });
    if (table && text.includes("'VC_FAULT'")) out.push({ code: 'VC_FAULT', file });
  }
  return out;
}
