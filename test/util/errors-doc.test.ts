// docs/errors.md lists every error code src/ raises, each with its cause, its fix and the command
// that retries it (SMC's "Troubleshoot": code, then cause and fix, then retry).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { errorCodesIn } from './error-codes.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));

test('every error code raised in src/ has its entry in docs/errors.md, with a cause, a fix and a retry', () => {
  const uses = errorCodesIn(root);
  const codes = new Set(uses.map((u) => u.code));
  // the scan finds the codes of the main error classes (if it found none, it would prove nothing)
  for (const c of ['NO_JOB', 'PREFLIGHT', 'VC_TASK_FAILED', 'NBD_ERROR', 'VDDK_AUTH', 'STATE_NO_SPACE', 'NO_SPACE', 'RECEIVER_UNREACHABLE']) {
    assert.ok(codes.has(c), `the scan finds ${c}`);
  }
  const doc = readFileSync(`${root}/docs/errors.md`, 'utf8');
  const entries = new Map<string, string>();
  for (const part of doc.split(/^### /m).slice(1)) {
    const [head, ...body] = part.split('\n');
    entries.set(head!.trim(), body.join('\n'));
  }
  const missing = [...codes].filter((c) => !entries.has(c)).map((c) => `${c} (${[...new Set(uses.filter((u) => u.code === c).map((u) => u.file))].join(', ')})`);
  assert.deepEqual(missing, [], 'codes raised in src/ but missing from docs/errors.md');
  for (const [code, body] of entries) {
    for (const field of ['cause', 'fix', 'retry']) {
      assert.match(body, new RegExp(`^- ${field}( \\*\\(transient\\)\\*)?: \\S`, 'm'), `docs/errors.md ${code}: no ${field}`);
    }
  }
});
