import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { startTestReceiver, sendDisk, sha256, readDisk, type TestRx } from './helpers.ts';
import { Sender } from '../../src/transfer/sender.ts';
import { UserError } from '../../src/util/errors.ts';
import { formatFingerprint } from '../../src/transfer/connect.ts';
import { ZSTD_LEVEL_MAP } from '../../src/transfer/levels.ts';

const MiB = 1 << 20;
let t: TestRx;
before(async () => { t = await startTestReceiver(); });
after(async () => { await t.close(); });

function textData(size: number): Buffer {
  const words = ['disk', 'block', 'vmware', 'receiver', 'image', 'chunk', 'cycle', 'extent', 'zstd', 'sha256', 'mount', 'ext4'];
  const b = Buffer.alloc(size);
  let pos = 0; let i = 7;
  while (pos < size) { i = (i * 31 + 17) % 9973; pos += b.write(`${words[i % words.length]}-${i} `, pos); }
  return b;
}

test('every compression level round-trips; compressible data shrinks, random data goes raw, zeros go as markers', async () => {
  const text = textData(4 * MiB);
  const rnd = randomBytes(2 * MiB);
  const disk = Buffer.concat([text, rnd, Buffer.alloc(2 * MiB)]);
  const s = await t.sender('lvl-a');
  const wire: Record<number, number> = {};
  for (const level of [0, 1, 4, 7, 10]) {
    s.setCompression(level);
    const c = await s.beginCycle({ cycleId: `l${level}`, disks: [{ disk: 0, capacity: disk.length }], baseImageId: null });
    await c.send(0, 0, text);
    await c.send(0, text.length, rnd);
    await c.send(0, text.length + rnd.length, disk.subarray(text.length + rnd.length)); // zeros as data: the sender detects them
    const img = await c.commit();
    assert.equal(sha256(await readDisk(t.rx, 'lvl-a', img.imageId, 0, disk.length)), sha256(disk), `level ${level} round-trips`);
    const st = c.stats();
    wire[level] = st.wireBytes;
    assert.equal(st.zeroBytes, 2 * MiB, 'the zero megabytes went as markers');
    if (level === 0) assert.ok(st.wireBytes >= text.length + rnd.length && st.wireBytes < text.length + rnd.length + 4096);
    else assert.ok(st.wireBytes < text.length / 3 + rnd.length + 8192, `level ${level}: ${st.wireBytes} wire bytes`);
  }
  assert.ok(wire[10]! <= wire[1]!, `level 10 (${wire[10]}) is no bigger than level 1 (${wire[1]})`);
  assert.equal(ZSTD_LEVEL_MAP.length, 11);
  await s.close();
});

test('bandwidth limit holds the wire rate within ±20 %, and can change while sending', async (tt) => {
  // modest rates: the test must hold on a loaded 2-core machine
  const s = await t.sender('bw-a', { compression: 0, bandwidthMbps: 16 });
  const data = randomBytes(10 * MiB);
  const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: data.length }] });
  const marks: { at: number; wire: number }[] = [];
  c.on('progress', (p: { wireBytes: number }) => marks.push({ at: performance.now(), wire: p.wireBytes }));
  const rate = (from: number, to: number) => {
    const a = marks.find((m) => m.wire >= from)!; const b = marks.find((m) => m.wire >= to)!;
    return ((b.wire - a.wire) * 8) / 1e6 / ((b.at - a.at) / 1000);
  };
  const phase1 = 4 * MiB;
  await sendDisk(c, 0, data.subarray(0, phase1), 256 * 1024);
  while ((marks.at(-1)?.wire ?? 0) < phase1) await new Promise((r) => setTimeout(r, 5));
  s.setBandwidthMbps(32);
  const switchAt = marks.at(-1)!.wire;
  for (let off = phase1; off < data.length; off += 256 * 1024) await c.send(0, off, data.subarray(off, off + 256 * 1024));
  await c.commit();
  const first = rate(MiB / 2, phase1 - MiB / 4);
  const second = rate(switchAt + MiB / 2, data.length - MiB / 4);
  tt.diagnostic(`measured ${first.toFixed(1)} Mbps at a 16 Mbps limit, ${second.toFixed(1)} Mbps at 32`);
  assert.ok(first > 16 * 0.8 && first < 16 * 1.2, `16 Mbps limit measured ${first.toFixed(1)} Mbps`);
  assert.ok(second > 32 * 0.8 && second < 32 * 1.2, `32 Mbps limit measured ${second.toFixed(1)} Mbps`);
  await s.close();
});

test('a wrong pinned fingerprint is refused naming both fingerprints and the fix', async () => {
  const wrong = 'ab'.repeat(32);
  await assert.rejects(t.sender('fp-a', { fingerprint: wrong }), (e: unknown) => {
    assert.ok(e instanceof UserError);
    assert.equal(e.code, 'FINGERPRINT_MISMATCH');
    assert.ok(e.message.includes(formatFingerprint(t.rx.fingerprint)), 'names the presented fingerprint');
    assert.ok(e.message.includes(formatFingerprint(wrong)), 'names the pinned fingerprint');
    assert.match(e.fix!, /vmlift receiver info/);
    return true;
  });
  await assert.rejects(t.sender('fp-a', { fingerprint: 'not-hex' }), /not a SHA-256 certificate fingerprint/);
  // with colons and upper case it is accepted
  const s = await t.sender('fp-a', { fingerprint: formatFingerprint(t.rx.fingerprint) });
  await s.close();
});

/** A minimal HTTP CONNECT proxy; `auth` = "user:pass" demands Basic auth. Records the CONNECT targets. */
function startProxy(auth?: string): Promise<{ port: number; targets: string[]; refused: number; close(): void }> {
  const targets: string[] = [];
  const state = { refused: 0 };
  const server = net.createServer((client) => {
    let head = Buffer.alloc(0);
    const onData = (d: Buffer) => {
      head = Buffer.concat([head, d]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      client.off('data', onData);
      const lines = head.subarray(0, end).toString('latin1').split('\r\n');
      const [method, target] = lines[0]!.split(' ');
      const authz = lines.find((l) => l.toLowerCase().startsWith('proxy-authorization:'));
      if (method !== 'CONNECT') { client.end('HTTP/1.1 405 Method Not Allowed\r\n\r\n'); return; }
      if (auth && authz?.split(' ').pop() !== Buffer.from(auth).toString('base64')) {
        state.refused++;
        client.end('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="t"\r\n\r\n');
        return;
      }
      targets.push(target!);
      const [host, port] = [target!.slice(0, target!.lastIndexOf(':')), Number(target!.slice(target!.lastIndexOf(':') + 1))];
      const up = net.connect(port, host, () => {
        client.write('HTTP/1.1 200 Connection established\r\n\r\n');
        const rest = head.subarray(end + 4);
        if (rest.length) up.write(rest);
        client.pipe(up); up.pipe(client);
      });
      up.on('error', () => client.destroy());
      client.on('error', () => up.destroy());
    };
    client.on('data', onData);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    port: (server.address() as net.AddressInfo).port, targets, get refused() { return state.refused; },
    close: () => { server.close(); },
  })));
}

test('through an HTTP CONNECT proxy, without and with authentication', async () => {
  const data = randomBytes(3 * MiB);
  const open = await startProxy();
  try {
    const s = await t.sender('px-a', { proxy: `http://127.0.0.1:${open.port}` });
    const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: data.length }] });
    await sendDisk(c, 0, data);
    const img = await c.commit();
    assert.equal(sha256(await readDisk(t.rx, 'px-a', img.imageId, 0, data.length)), sha256(data));
    assert.ok(open.targets.includes(`127.0.0.1:${t.rx.controlPort}`) && open.targets.includes(`127.0.0.1:${t.rx.dataPort}`), 'control and data went through the proxy');
    await s.close();
  } finally { open.close(); }

  const authd = await startProxy('alice:s3cret');
  try {
    await assert.rejects(t.sender('px-b', { proxy: `http://alice@127.0.0.1:${authd.port}`, proxyPassword: 'wrong' }), (e: unknown) => {
      assert.ok(e instanceof UserError); assert.equal(e.code, 'PROXY_AUTH'); assert.match(e.message, /refused the credentials \(407\)/); return true;
    });
    const s = await t.sender('px-b', { proxy: `http://alice@127.0.0.1:${authd.port}`, proxyPassword: 's3cret' });
    const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: data.length }] });
    await sendDisk(c, 0, data);
    const img = await c.commit();
    assert.equal(sha256(await readDisk(t.rx, 'px-b', img.imageId, 0, data.length)), sha256(data));
    assert.ok(authd.refused >= 1 && authd.targets.length >= 2);
    assert.ok(!t.log.text().includes('s3cret'), 'the proxy password is not logged');
    await s.close();
  } finally { authd.close(); }
});
