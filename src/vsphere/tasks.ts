import { UserError } from '../util/errors.ts';
import type { VimSession } from './session.ts';
import { retrieveProperties, objectsSpec } from './methods.ts';
import { moref, num, str, xsiType, type MoRef } from './convert.ts';
import { taskFailed } from './errors.ts';

export interface TaskWaitOptions {
  /** Give up after this long (the task may still finish in vCenter). Default 30 min. */
  timeoutMs?: number;
  onProgress?: (percent: number) => void;
  /** What the task does, for messages ("creating snapshot vmlift-… of web01"). */
  what?: string;
}

export interface TaskResult { ref: MoRef; result: unknown; resultRef?: MoRef }

/** Polls a task's info until success or error, with a growing interval (100 ms … 2 s). */
export async function waitForTask(s: VimSession, task: MoRef, o: TaskWaitOptions = {}): Promise<TaskResult> {
  const what = o.what ?? `task ${task.value}`;
  const deadline = Date.now() + (o.timeoutMs ?? 30 * 60_000);
  let delay = 100;
  let last = -1;
  for (;;) {
    const [t] = await retrieveProperties(s, [objectsSpec([task], [{ type: 'Task', pathSet: ['info.state', 'info.progress', 'info.error', 'info.result'] }])]);
    const p = t?.props ?? {};
    const state = str(p['info.state']);
    const progress = num(p['info.progress']);
    if (progress !== undefined && progress !== last) { last = progress; o.onProgress?.(progress); }
    if (state === 'success') {
      o.onProgress?.(100);
      const result = p['info.result'];
      return { ref: task, result, resultRef: moref(result) };
    }
    if (state === 'error') {
      const err = p['info.error'];
      const msg = str(err?.localizedMessage) || str(err?.fault?.reason) || 'no reason given';
      throw taskFailed(what, msg, xsiType(err?.fault));
    }
    if (!t) throw taskFailed(what, 'the task disappeared from vCenter');
    if (Date.now() > deadline) {
      throw new UserError('VC_TASK_TIMEOUT', `${what} did not finish within ${Math.round((o.timeoutMs ?? 0) / 1000)} s (task ${task.value} is ${state})`,
        'look at the task in the vSphere Client; vCenter may be overloaded or the host unresponsive. Retry later', { transient: true });
    }
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(2000, Math.round(delay * 1.5));
  }
}
