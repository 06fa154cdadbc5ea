import type { IncomingMessage } from 'node:http';
import { UserError } from './errors.ts';

/** A request's JSON object body ({} when empty), refused past `limit` bytes (BODY_TOO_LARGE) or when not JSON (BAD_JSON). */
export async function readJsonBody(req: IncomingMessage, limit: number): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > limit) throw new UserError('BODY_TOO_LARGE', `request body larger than ${limit >> 20} MiB`);
    chunks.push(c as Buffer);
  }
  if (!size) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new UserError('BAD_JSON', 'request body is not valid JSON');
  }
}
