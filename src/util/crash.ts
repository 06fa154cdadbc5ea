/**
 * Crash points for the crash-recovery tests: when VMLIFT_TEST_CRASH_AT names this point, the
 * process kills itself with SIGKILL right here, exactly as a power cut or kill -9 would.
 * Costs one string comparison when unset.
 */
export function crashPoint(name: string): void {
  if (process.env.VMLIFT_TEST_CRASH_AT === name) process.kill(process.pid, 'SIGKILL');
}
