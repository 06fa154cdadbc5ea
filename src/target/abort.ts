/**
 * Synchronous clean-up when the process ends by a signal or an exit while work is under way
 * (a detached guestfish daemon, temporary exports): `finally` blocks do not run then.
 */
type Sig = 'SIGINT' | 'SIGTERM' | 'SIGHUP';
const SIGNALS: Sig[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** Runs `fn` once if the process exits or gets SIGINT/SIGTERM/SIGHUP before the returned function is called. */
export function onAbort(fn: () => void): () => void {
  let done = false;
  const off = () => {
    done = true;
    process.off('exit', onExit);
    for (const s of SIGNALS) process.off(s, onSignal);
  };
  const onExit = () => { if (!done) { off(); fn(); } };
  const onSignal = (sig: Sig) => {
    if (done) return;
    off();
    try { fn(); } finally {
      // The default action (end the process) when nobody else handles the signal.
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    }
  };
  process.once('exit', onExit);
  for (const s of SIGNALS) process.on(s, onSignal);
  return off;
}
