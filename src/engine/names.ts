/**
 * What a user may call things: workgroup display names (SMC's naming rules), job names, the
 * descriptions of jobs and workgroups, and the disk selection of a job. Ids stay `[a-z0-9-]`
 * (util/ids.ts); these are the free-text labels next to them.
 */
import { UserError } from '../util/errors.ts';
import type { DiskSelection } from '../state/types.ts';

export const DESCRIPTION_MAX = 256;
export const JOB_NAME_MAX = 128;

/** 2–64 characters; a letter (CJK included) first; then letters, digits and `: . _ -`; not a URL. */
const WORKGROUP_NAME = /^\p{L}[\p{L}\p{Nd}:._-]{1,63}$/u;

export function workgroupName(name: string): string {
  const fix = 'use 2 to 64 characters that start with a letter or a CJK character and hold only letters, digits and : . _ -';
  if (/^https?:\/\//i.test(name)) throw new UserError('BAD_NAME', `workgroup name ${JSON.stringify(name)} starts with ${name.slice(0, name.indexOf('//') + 2)}; names may not start with http:// or https://`, fix);
  if ([...name].length < 2 || [...name].length > 64) throw new UserError('BAD_NAME', `workgroup name ${JSON.stringify(name)} has ${[...name].length} characters; a name has 2 to 64`, fix);
  if (!WORKGROUP_NAME.test(name)) {
    const why = /^\p{L}/u.test(name) ? `holds ${JSON.stringify([...name].find((c) => !/[\p{L}\p{Nd}:._-]/u.test(c)))}` : 'does not start with a letter or a CJK character';
    throw new UserError('BAD_NAME', `workgroup name ${JSON.stringify(name)} ${why}`, fix);
  }
  return name;
}

/** A job's display name (defaults to the VM's name, which vCenter lets hold almost anything): printable, 1–128 characters. */
export function jobName(name: string): string {
  if (!name.trim() || [...name].length > JOB_NAME_MAX || /\p{Cc}/u.test(name)) {
    throw new UserError('BAD_NAME', `job name ${JSON.stringify(name)} must be 1 to ${JOB_NAME_MAX} printable characters`, `pass --name with 1 to ${JOB_NAME_MAX} characters and no control characters`);
  }
  return name;
}

export function description(text: string): string {
  if ([...text].length > DESCRIPTION_MAX || /[\p{Cc}]/u.test(text.replace(/\n/g, ''))) {
    throw new UserError('BAD_DESCRIPTION', `a description holds at most ${DESCRIPTION_MAX} printable characters (got ${[...text].length})`,
      `shorten --description to ${DESCRIPTION_MAX} characters, without control characters`);
  }
  return text;
}

function numberList(flag: string, value: string | number[]): number[] {
  const items = Array.isArray(value) ? value.map(String) : value.split(',').map((s) => s.trim()).filter(Boolean);
  const out = items.map((s) => {
    const n = Number(s);
    if (!/^\d+$/.test(s) || !Number.isSafeInteger(n)) throw new UserError('BAD_DISKS', `${flag} wants whole numbers, got ${JSON.stringify(s)}`, `pass ${flag} as a comma-separated list such as 0,2`);
    return n;
  });
  if (!out.length) throw new UserError('BAD_DISKS', `${flag} names no disk`, `pass ${flag} with at least one disk, e.g. ${flag} 0`);
  return [...new Set(out)].sort((a, b) => a - b);
}

/** `--disks 0,2` (positions) or `--exclude-disk KEY` (device keys, repeatable); not both. */
export function diskSelection(input: { include?: string | number[]; exclude?: string | number[] }): DiskSelection | null {
  if (input.include !== undefined && input.exclude !== undefined) {
    throw new UserError('BAD_DISKS', '--disks and --exclude-disk exclude each other', 'choose the disks either by position (--disks 0,2) or by device key to leave out (--exclude-disk 2001)');
  }
  if (input.include !== undefined) return { include: numberList('--disks', input.include) };
  if (input.exclude !== undefined) return { exclude: numberList('--exclude-disk', input.exclude) };
  return null;
}

/**
 * The disks of `disks` (sorted by key) a selection keeps. A position or key that the VM lacks is an
 * error, and so is a selection that leaves no disk: a job never silently reads other disks than asked.
 */
export function selectDisks<D extends { key: number }>(disks: D[], sel: DiskSelection | null, vm: string): D[] {
  if (!sel) return disks;
  const fix = `see the VM's disks with \`vmlift vc show ${vm}\`, then create the job again with the right --disks or --exclude-disk`;
  if (sel.include) {
    const missing = sel.include.filter((i) => i >= disks.length);
    if (missing.length) throw new UserError('NO_SUCH_DISK', `${vm} has ${disks.length} disk(s) (positions 0–${disks.length - 1}); --disks names ${missing.join(', ')}`, fix);
    return disks.filter((_, i) => sel.include!.includes(i));
  }
  const keys = new Set(disks.map((d) => d.key));
  const missing = (sel.exclude ?? []).filter((k) => !keys.has(k));
  if (missing.length) throw new UserError('NO_SUCH_DISK', `${vm} has no disk with device key ${missing.join(', ')} (its keys: ${[...keys].join(', ')})`, fix);
  const kept = disks.filter((d) => !sel.exclude!.includes(d.key));
  if (!kept.length) throw new UserError('NO_SUCH_DISK', `--exclude-disk leaves none of the disks of ${vm}`, 'keep at least one disk');
  return kept;
}
