/**
 * The NBD handshake on its own (src/source/nbd/handshake.ts) against real nbdkit and qemu-nbd:
 * what it negotiates, and the servers it refuses. Reading through the negotiated connection is
 * covered by nbd.test.ts, nbd-faults.test.ts and nbd-tls.test.ts.
 */
import assert from 'node:assert/strict';
import { truncateSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { handshake, type NbdHandshakeSettings } from '../../src/source/nbd/handshake.ts';
import { NbdError } from '../../src/source/nbd/errors.ts';
import * as P from '../../src/source/nbd/protocol.ts';
import { parseNbdUri } from '../../src/source/nbd/uri.ts';
import { nbdkit, socketReady, startServer, tempDir, type Server } from './helpers.ts';

const MiB = 1 << 20;
const { dir, cleanup } = tempDir('vmlift-nbd-handshake-');
const servers: Server[] = [];
after(async () => { for (const s of servers) await s.stop(); cleanup(); });

function connectTo(socketPath: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socketPath);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Handshake with the server on `socketPath` (nbds+unix when `tls`); the sockets are closed after. */
async function negotiateWith(socketPath: string, settings: NbdHandshakeSettings = {}, o: { tls?: boolean; timeoutMs?: number } = {}) {
  const raw = await connectTo(socketPath);
  const target = parseNbdUri(`nbd${o.tls ? 's' : ''}+unix:///?socket=${socketPath}`);
  try {
    const r = await handshake(raw, target, settings, o.timeoutMs ?? 5000);
    r.sock.destroy();
    return { ...r, raw };
  } finally {
    raw.destroy();
  }
}

async function refusal(socketPath: string, o: { tls?: boolean; timeoutMs?: number } = {}): Promise<{ err: NbdError; raw: net.Socket }> {
  const raw = await connectTo(socketPath);
  const target = parseNbdUri(`nbd${o.tls ? 's' : ''}+unix:///?socket=${socketPath}`);
  const err = await handshake(raw, target, {}, o.timeoutMs ?? 5000).then(() => assert.fail('the handshake should fail'), (e: unknown) => e);
  assert.ok(err instanceof NbdError, String(err));
  return { err, raw };
}

async function server(name: string, args: string[]) {
  const s = await nbdkit(dir, name, args);
  servers.push(s);
  return s.socket;
}

const has = (flags: number, f: number) => (flags & f) !== 0;

describe('NBD handshake against nbdkit', () => {
  it('negotiates the export size, transmission flags, structured replies and base:allocation, and leaves no bytes behind', async () => {
    const r = await negotiateWith(await server('mem', ['memory', String(MiB)]));
    assert.equal(r.info.size, MiB);
    assert.ok(has(r.info.transmissionFlags, P.TFLAG_HAS_FLAGS));
    assert.ok(!has(r.info.transmissionFlags, P.TFLAG_READ_ONLY));
    assert.ok(has(r.info.transmissionFlags, P.TFLAG_CAN_MULTI_CONN));
    assert.ok(has(r.info.transmissionFlags, P.TFLAG_SEND_DF), 'DF is offered once structured replies are on');
    assert.equal(r.info.structuredReplies, true);
    assert.equal(typeof r.info.allocationContextId, 'number');
    // the server sent no block sizes: the protocol's defaults
    assert.deepEqual([r.info.minBlock, r.info.preferredBlock, r.info.maxBlock], [1, 4096, 32 * MiB]);
    assert.equal(r.leftover.length, 0);
    assert.equal(r.sock, r.raw, 'without TLS the transmission phase runs on the plain socket');

    const ro = await negotiateWith(await server('mem-ro', ['--read-only', 'memory', String(3 * MiB)]));
    assert.equal(ro.info.size, 3 * MiB);
    assert.ok(has(ro.info.transmissionFlags, P.TFLAG_READ_ONLY));
  });

  it('takes the block sizes the server states (NBD_INFO_BLOCK_SIZE)', async () => {
    const r = await negotiateWith(await server('bs', ['--filter=blocksize-policy', 'memory', String(MiB),
      'blocksize-minimum=4096', 'blocksize-preferred=65536', 'blocksize-maximum=1M']));
    assert.deepEqual([r.info.minBlock, r.info.preferredBlock, r.info.maxBlock], [4096, 65536, MiB]);
  });

  it('goes without structured replies or base:allocation when told to, or when the server has no structured replies', async () => {
    const sock = await server('opts', ['memory', String(MiB)]);
    const noSr = await negotiateWith(sock, { structuredReplies: false });
    assert.equal(noSr.info.structuredReplies, false);
    assert.equal(noSr.info.allocationContextId, undefined);
    assert.ok(!has(noSr.info.transmissionFlags, P.TFLAG_SEND_DF));
    const noAlloc = await negotiateWith(sock, { allocationContext: false });
    assert.equal(noAlloc.info.structuredReplies, true);
    assert.equal(noAlloc.info.allocationContextId, undefined);
    const old = await negotiateWith(await server('no-sr', ['--no-sr', 'memory', String(MiB)]));
    assert.equal(old.info.structuredReplies, false);
    assert.equal(old.info.allocationContextId, undefined);
    assert.equal(old.info.size, MiB);
  });

  it('refuses old-style and non-fixed newstyle servers, and a server that does not offer TLS to nbds://, for good', async () => {
    const cases: Array<[string, string[], RegExp, boolean?]> = [
      ['oldstyle', ['--oldstyle', 'memory', String(MiB)], /old-style handshake, which vmlift does not support/],
      ['unfixed', ['--mask-handshake=0', 'memory', String(MiB)], /does not support the fixed newstyle handshake/],
      ['notls', ['--tls=off', 'memory', String(MiB)], /the server refused TLS \(.*NBD_REP_ERR_POLICY.*\); use nbd:\/\/ if it does not offer TLS/, true],
    ];
    for (const [name, args, message, tls] of cases) {
      const { err, raw } = await refusal(await server(name, args), { tls });
      assert.match(err.message, message);
      assert.match(err.message, /^NBD negotiation with nbds?\+unix:/);
      assert.equal(err.transient, false, name);
      assert.equal(raw.destroyed, true, `${name}: the socket is closed`);
    }
  });
});

describe('NBD handshake against qemu-nbd', () => {
  it('negotiates a read-only raw export: exact size, read-only, and a base:allocation context id of 0 counts', async () => {
    const file = path.join(dir, 'q.raw');
    writeFileSync(file, '');
    truncateSync(file, 3 * MiB + 512);
    const sock = path.join(dir, 'qemu.sock');
    servers.push(await startServer('qemu-nbd', ['--read-only', '--persistent', '-f', 'raw', '-k', sock, file], socketReady(sock)));
    const r = await negotiateWith(sock);
    assert.equal(r.info.size, 3 * MiB + 512);
    assert.ok(has(r.info.transmissionFlags, P.TFLAG_READ_ONLY));
    assert.equal(r.info.structuredReplies, true);
    assert.notEqual(r.info.allocationContextId, undefined);
    assert.equal(r.leftover.length, 0);
  });
});

describe('NBD handshake against servers that are not NBD servers', () => {
  async function plainServer(name: string, onConnection: (s: net.Socket) => void): Promise<string> {
    const sock = path.join(dir, `${name}.sock`);
    const srv = net.createServer(onConnection);
    await new Promise<void>((r) => srv.listen(sock, r));
    after(() => new Promise<void>((r) => { srv.close(() => r()); }));
    return sock;
  }

  it('refuses a server that greets with something else', async () => {
    const sock = await plainServer('ssh', (s) => s.end('SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n'));
    const { err, raw } = await refusal(sock);
    assert.match(err.message, /not an NBD server \(no NBDMAGIC greeting\)/);
    assert.equal(err.transient, false);
    assert.equal(raw.destroyed, true);
  });

  it('gives up on a server that says nothing, within the timeout, as worth a retry', async () => {
    const held: net.Socket[] = [];
    const sock = await plainServer('silent', (s) => { held.push(s); });
    after(() => { for (const s of held) s.destroy(); });
    const t0 = Date.now();
    const { err, raw } = await refusal(sock, { timeoutMs: 300 });
    assert.match(err.message, /negotiation timed out after 300 ms/);
    assert.equal(err.transient, true);
    assert.ok(Date.now() - t0 < 3000);
    assert.equal(raw.destroyed, true);
  });
});
