import { CodedError, errorMessage, errorReport, isUserError } from '../util/errors.ts';

/** Print a result either as JSON (one document) or with a human formatter. */
export function printResult<T>(json: boolean | undefined, value: T, human: (v: T) => string): void {
  process.stdout.write(json ? `${JSON.stringify(value, null, 2)}\n` : `${human(value)}\n`);
}

/** A fixed-width text table. */
export function table(headers: string[], rows: (string | number)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map(String))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (c ?? '').padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n; let u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return `${v.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}

/**
 * Print the error that ended a command: message and fix on stderr; with `--json` also its report
 * (`{ "error": { code, message, fix } }`) on stdout. Returns the exit status: the user error's, else 2.
 */
export function printError(e: unknown, json: boolean): number {
  // one line: a valid document for --json commands and a valid line for JSON-lines ones (agent sync)
  if (json) process.stdout.write(`${JSON.stringify({ error: errorReport(e) })}\n`);
  const fix = e instanceof CodedError && e.fix ? `  fix: ${e.fix}\n` : '';
  if (isUserError(e)) {
    process.stderr.write(`vmlift: error: ${e.message}\n${fix}`);
    return e.exitCode;
  }
  process.stderr.write(`vmlift: unexpected error: ${errorMessage(e)}\n${fix}`);
  if (process.env.VMLIFT_DEBUG) process.stderr.write(`${(e as Error)?.stack ?? ''}\n`);
  return 2;
}
