/**
 * A stand-in connector for the kill -9 test: starts one NBD server through NbdServers, prints its pid, and
 * waits to be killed. The server is an administrator's wrapper script around nbdkit, which (unlike
 * nbdkit alone, that exits with its parent) outlives the connector.
 */
import { NbdServers } from '../../src/source/nbd-server.ts';

const [dir, image] = process.argv.slice(2);
const servers = new NbdServers({ dir: dir!, command: ['bash', '-c', 'nbdkit --unix "$0" --foreground --readonly file "$1" & wait', '{socket}', image!] });
const src = await servers.open({ name: 'job-2000', values: {}, password: 'child-secret-pw' });
await src.read(0, 4096);
process.stdout.write(`${JSON.stringify({ pids: servers.pids() })}\n`);
setInterval(() => undefined, 1000);
