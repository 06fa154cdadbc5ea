/** `vmlift connector serve` as a child process of a test, and the CLI's `--json` API against its home. */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { vmlift } from '../vsphere/helpers.ts';
import type { Lab } from '../../lab/lab.ts';
import type { TestRx } from '../transfer/helpers.ts';

const bin = fileURLToPath(new URL('../../bin/vmlift', import.meta.url));

export interface ConnectorProcess {
  /**
   * Starts `connector serve` (API on a free port and a 200 ms tick unless ARGS give `--api-port` or
   * `--tick-ms`) and waits until its API answers (api.json written); killed by `kill`.
   */
  serve(env?: NodeJS.ProcessEnv, args?: string[]): Promise<ChildProcess>;
  /** Runs `vmlift ARGS --home HOME --json`, asserts exit 0, returns the parsed output. */
  api<T>(args: string[]): Promise<T>;
  /** Polls `job show ID --json` (every 150 ms, up to 2 min) until `pred` holds, and returns that view. */
  waitForJob<V>(id: string, pred: (v: V) => boolean, what: string): Promise<V>;
  /** SIGKILLs every connector this helper started that still runs. */
  kill(): void;
}

/**
 * `vmlift connector init` in DIR/home against the lab and the test receiver, its pairing code in
 * DIR/code (the code never goes on argv); asserts exit 0. EXTRA: more init options.
 */
export async function initConnector(dir: string, lab: Lab, rx: TestRx, extra: string[] = []): Promise<{ home: string; codeFile: string }> {
  const home = join(dir, 'home');
  const codeFile = join(dir, 'code');
  writeFileSync(codeFile, `${rx.code}\n`);
  const init = await vmlift(['connector', 'init', '--home', home, '--server', lab.url, '--user', lab.user, '--password-file', lab.passwordFile,
    '--thumbprint', lab.thumbprint, '--receiver', `127.0.0.1:${rx.rx.controlPort}`, '--fingerprint', rx.rx.fingerprint, '--code-file', codeFile, ...extra]);
  assert.equal(init.code, 0, init.stderr);
  return { home, codeFile };
}

export function connectorProcess(home: string, baseEnv: NodeJS.ProcessEnv = {}): ConnectorProcess {
  const children: ChildProcess[] = [];
  const api = async <T>(args: string[]): Promise<T> => {
    const r = await vmlift([...args, '--home', home, '--json']);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  };
  return {
    api,
    async serve(env = {}, args: string[] = []) {
      rmSync(join(home, 'api.json'), { force: true });
      const defaults = [...(args.includes('--api-port') ? [] : ['--api-port', '0']), ...(args.includes('--tick-ms') ? [] : ['--tick-ms', '200'])];
      const p = spawn(bin, ['connector', 'serve', '--home', home, ...defaults, ...args],
        { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...baseEnv, ...env } });
      children.push(p);
      let err = '';
      p.stderr!.on('data', (b) => { err += b; });
      for (let i = 0; i < 300 && !existsSync(join(home, 'api.json')); i++) {
        if (p.exitCode !== null) throw new Error(`connector exited: ${err}`);
        await sleep(100);
      }
      assert.ok(existsSync(join(home, 'api.json')), `connector did not start: ${err}`);
      return p;
    },
    async waitForJob<V>(id: string, pred: (v: V) => boolean, what: string) {
      for (let i = 0; i < 800; i++) {
        const v = await api<V>(['job', 'show', id]);
        if (pred(v)) return v;
        await sleep(150);
      }
      throw new Error(`timed out waiting for ${what}`);
    },
    kill() {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    },
  };
}
