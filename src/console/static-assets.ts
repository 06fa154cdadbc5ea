/**
 * Serves the console's built page (dist/console, made by scripts/build.sh with Vite) under /console/:
 * files only from that folder, gzip when the browser takes it, a strict Content-Security-Policy
 * (no script or style from anywhere but the connector; no network beyond it).
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, sep } from 'node:path';
import { gzipSync } from 'node:zlib';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { PROJECT_ROOT } from '../util/root.ts';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml', '.png': 'image/png', '.json': 'application/json', '.ico': 'image/x-icon',
};

const CSP = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

export const consoleDir = (): string => process.env.VMLIFT_CONSOLE_DIR ?? join(PROJECT_ROOT, 'dist', 'console');

export class StaticAssets {
  private readonly cache = new Map<string, { body: Buffer; gz: Buffer; type: string }>();
  constructor(private readonly dir = consoleDir()) {}

  /** Answers GET /console/…; false for other paths. */
  async serve(req: IncomingMessage, res: ServerResponse, path: string): Promise<boolean> {
    if (path === '/' || path === '/console') {
      res.writeHead(302, { location: '/console/' }).end();
      return true;
    }
    if (!path.startsWith('/console/') || (req.method !== 'GET' && req.method !== 'HEAD')) return false;
    const rel = path === '/console/' ? 'index.html' : decodeURIComponent(path.slice('/console/'.length));
    const file = normalize(join(this.dir, rel));
    if (!file.startsWith(this.dir + sep)) return this.missing(res, path);
    let entry = this.cache.get(file);
    if (!entry) {
      if (!existsSync(file)) {
        if (!existsSync(join(this.dir, 'index.html'))) {
          res.writeHead(503, { 'content-type': 'text/plain; charset=utf-8' })
            .end(`the console is not built (${this.dir} has no index.html); fix: run scripts/setup.sh (or scripts/build.sh) on the connector's machine\n`);
          return true;
        }
        return this.missing(res, path);
      }
      const body = await readFile(file);
      entry = { body, gz: gzipSync(body, { level: 9 }), type: TYPES[extname(file)] ?? 'application/octet-stream' };
      this.cache.set(file, entry);
    }
    const gzip = /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
    const body = gzip ? entry.gz : entry.body;
    res.writeHead(200, {
      'content-type': entry.type, 'content-length': body.length, 'content-security-policy': CSP,
      'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer', vary: 'accept-encoding',
      // Hashed asset names never change; index.html must be re-read to see a new build.
      'cache-control': rel.startsWith('assets/') ? 'public, max-age=31536000, immutable' : 'no-cache',
      ...(gzip ? { 'content-encoding': 'gzip' } : {}),
    });
    res.end(req.method === 'HEAD' ? undefined : body);
    return true;
  }

  private missing(res: ServerResponse, path: string): true {
    res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end(`no console file ${path}\n`);
    return true;
  }
}
