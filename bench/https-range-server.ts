/**
 * A small HTTPS file server with Range support, standing in for vCenter's /folder in the transport benchmark.
 * Runs in its own process so the client being measured does not share its event loop.
 * Usage: node --import tsx bench/https-range-server.ts FILE CERT KEY  → prints {"port":N} on stdout.
 */
import { open, stat } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import https from 'node:https';

const [file, cert, key] = process.argv.slice(2) as [string, string, string];
const size = (await stat(file)).size;
const fh = await open(file, 'r');
const server = https.createServer({ cert: readFileSync(cert), key: readFileSync(key) }, async (req, res) => {
  const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
  if (!m) { res.writeHead(416).end(); return; }
  const start = Number(m[1]);
  const end = Math.min(Number(m[2]), size - 1);
  res.writeHead(206, { 'content-range': `bytes ${start}-${end}/${size}`, 'content-length': end - start + 1 });
  const chunk = 1 << 20;
  for (let o = start; o <= end; o += chunk) {
    const n = Math.min(chunk, end + 1 - o);
    const { buffer } = await fh.read(Buffer.allocUnsafe(n), 0, n, o);
    if (!res.write(buffer)) await new Promise((r) => res.once('drain', r));
  }
  res.end();
});
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: (server.address() as { port: number }).port }) + '\n');
});
process.on('SIGTERM', () => { server.close(); void fh.close(); process.exit(0); });
