// Crash points: `VMLIFT_TEST_CRASH_AT=name:n` kills the process (SIGKILL) at the n-th pass of that
// point and not before; a bare name at the first; other points never; and every point the kill -9
// matrix names exists in the product.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CRASH_POINTS } from '../../src/util/crash.ts';
import { POINTS } from '../../bench/chaos/matrix.ts';

const ROOT = join(import.meta.dirname, '../..');
const script = `import { crashPoint } from ${JSON.stringify(join(ROOT, 'src/util/crash.ts'))};
for (let i = 1; i <= 5; i++) { crashPoint('a:b'); crashPoint('a:bc'); console.log(i); }`;

function run(at: string | undefined): { out: string; signal: string | null } {
  const env = { ...process.env };
  if (at === undefined) delete env.VMLIFT_TEST_CRASH_AT; else env.VMLIFT_TEST_CRASH_AT = at;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { env, encoding: 'utf8' });
  return { out: r.stdout.trim().split('\n').filter(Boolean).join(','), signal: r.signal };
}

test('name:n kills at the n-th pass, a bare name at the first, other names never', () => {
  assert.deepEqual(run(undefined), { out: '1,2,3,4,5', signal: null });
  assert.deepEqual(run('a:b:3'), { out: '1,2', signal: 'SIGKILL' });
  assert.deepEqual(run('a:b'), { out: '', signal: 'SIGKILL' });
  assert.deepEqual(run('a:bc:2'), { out: '1', signal: 'SIGKILL' }, 'a longer name is not a pass count of a shorter one');
  assert.deepEqual(run('a:b:9'), { out: '1,2,3,4,5', signal: null });
  assert.deepEqual(run('x:y'), { out: '1,2,3,4,5', signal: null });
});

test('every crash point the matrix uses is listed and called in src/', () => {
  const files: string[] = [];
  const walk = (d: string): void => { for (const n of readdirSync(d)) { const p = join(d, n); if (statSync(p).isDirectory()) walk(p); else if (p.endsWith('.ts')) files.push(p); } };
  walk(join(ROOT, 'src'));
  const text = files.filter((f) => !f.endsWith('util/crash.ts')).map((f) => readFileSync(f, 'utf8')).join('\n');
  for (const name of CRASH_POINTS) assert.ok(text.includes(`crashPoint('${name}')`), `${name} is called somewhere in src/`);
  for (const spec of Object.values(POINTS).flat()) if (spec.crash) assert.ok((CRASH_POINTS as readonly string[]).includes(spec.crash), spec.crash);
});
