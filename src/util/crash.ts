/**
 * Crash points for the crash-recovery tests and the kill -9 matrix (bench/chaos): when
 * VMLIFT_TEST_CRASH_AT is `name`, the process kills itself with SIGKILL at the first pass of that
 * point; `name:n` kills at the n-th pass (counted per process), exactly as a power cut or kill -9
 * would. Costs one string comparison when unset.
 */
let passes: Map<string, number> | undefined;

export function crashPoint(name: string): void {
  const at = process.env.VMLIFT_TEST_CRASH_AT;
  if (at === undefined) return;
  if (at === name) process.kill(process.pid, 'SIGKILL');
  if (at.length <= name.length + 1 || at.charCodeAt(name.length) !== 58 /* : */ || !at.startsWith(name)) return;
  const n = Number(at.slice(name.length + 1));
  passes ??= new Map();
  const k = (passes.get(name) ?? 0) + 1;
  passes.set(name, k);
  if (k === n) process.kill(process.pid, 'SIGKILL');
}

/** The names of every crash point in the product (the matrix picks from them; a test checks each is reachable). */
export const CRASH_POINTS = [
  'vc:snapshot-created', 'engine:changed-areas', 'engine:read', 'engine:after-receiver-commit',
  'transfer:send', 'transfer:flush', 'transfer:commit',
  'agent:read', 'agent:after-commit',
  'receiver:extent', 'store:flush', 'store:commit-flushed', 'store:commit-verified', 'store:commit-published',
  'store:retention', 'store:gc', 'store:export',
  'store:pack-synced', 'store:pack-sealed', 'store:gc-repacked', 'store:gc-merged', 'store:gc-merge-aside', 'store:migrate', 'store:migrate-rewritten', 'store:migrate-switched',
] as const;
