import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { readFile } from 'node:fs/promises';
import { UserError, type ErrorReport } from '../util/errors.ts';

/** The connector's home: state.db, config.json, api.json (port), api-token, logs/. */
export function connectorHome(opt?: string): string {
  return resolve(opt ?? process.env.VMLIFT_HOME ?? join(homedir(), '.vmlift'));
}

export interface ApiEndpoint { url: string; token: string }

export async function apiEndpoint(home: string): Promise<ApiEndpoint> {
  try {
    const { port } = JSON.parse(await readFile(join(home, 'api.json'), 'utf8')) as { port: number };
    const token = (await readFile(join(home, 'api-token'), 'utf8')).trim();
    return { url: `http://127.0.0.1:${port}`, token };
  } catch (e) {
    throw new UserError('NO_CONNECTOR', `no running connector found in ${home}`,
      `start it with \`vmlift connector serve --home ${home}\` (or pass the --home it runs with)`, { cause: e });
  }
}

/** Call the connector's local API; its errors become UserErrors with the connector's fix. */
export async function callApi<T = unknown>(home: string, method: string, path: string, body?: unknown): Promise<T> {
  const ep = await apiEndpoint(home);
  let res: Response;
  try {
    res = await fetch(`${ep.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${ep.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new UserError('NO_CONNECTOR', `cannot reach the connector at ${ep.url}: ${(e as Error).message}`,
      `start it with \`vmlift connector serve --home ${home}\``, { cause: e });
  }
  const json = (await res.json().catch(() => ({}))) as { error?: ErrorReport };
  if (!res.ok) {
    const err = json.error ?? { code: 'HTTP', message: `connector answered HTTP ${res.status}` };
    throw new UserError(err.code, err.message, err.fix, { transient: err.transient === true });
  }
  return json as T;
}
