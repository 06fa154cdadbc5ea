/** A disk whose host refuses reads longer than its NFC buffers: the read size drops to a power of two that fits, in as few steps as it can. */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import pino from 'pino';
import { MIN_NFC_READ, shrinkingOnNfc } from '../../src/engine/nfc-read-size.ts';
import { LocalSource } from '../../src/source/local/index.ts';
import { wrapSource } from '../../src/source/wrap.ts';

const KiB = 1024;
const dir = mkdtempSync(path.join(tmpdir(), 'vmlift-nfc-read-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const content = randomBytes(8 * 1024 * KiB);
const file = path.join(dir, 'disk.img');
writeFileSync(file, content);

class NfcError extends Error {}

/** The local file behind a host that refuses reads longer than `limit` the way ESXi's NFC server does. */
async function hostRefusingOver(limit: number) {
  const local = await LocalSource.open(file, { maxReadSize: 4 * 1024 * KiB });
  const asked: number[] = [];
  const refuse = (n: number): void => {
    asked.push(n);
    if (n > limit) throw new NfcError(`NFC failed to allocate the requested ${n} bytes`);
  };
  const host = wrapSource(local, {
    read: async (o, n) => { refuse(n); return local.read(o, n); },
    readInto: async (o, b) => { refuse(b.length); return local.readInto!(o, b); },
  });
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'warn' }, { write: (s: string) => { lines.push(JSON.parse(s)); } });
  return { local, asked, lines, source: shrinkingOnNfc(host, (e) => e instanceof NfcError, log, { diskKey: 2000 }) };
}

/** Reads [offset, offset+length) as the engine does: a refused read goes up, and is tried again. */
async function readRetrying(source: { read(o: number, n: number): Promise<Buffer> }, offset: number, length: number): Promise<{ data: Buffer; refusals: number }> {
  for (let refusals = 0; ; refusals++) {
    try { return { data: await source.read(offset, length), refusals }; } catch (e) { if (!(e instanceof NfcError) || refusals > 10) throw e; }
  }
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

for (const [label, length] of [['1 MiB + 64 KiB (an extent longer than a power of two)', 1088 * KiB], ['4 MiB', 4096 * KiB], ['3 MiB - 512 bytes', 3072 * KiB - 512]] as const) {
  it(`a refused read of ${label} on a host that takes 512 KiB: the read size goes to 512 KiB, never below, and the bytes are the disk's`, async () => {
    const h = await hostRefusingOver(512 * KiB);
    after(() => h.local.close());
    const { data, refusals } = await readRetrying(h.source, 64 * KiB, length);
    assert.equal(sha(data), sha(content.subarray(64 * KiB, 64 * KiB + length)));
    const sizes = h.lines.map((l) => Number(l.readSize));
    assert.equal(sizes.at(-1), 512 * KiB, `ends at 512 KiB (${JSON.stringify(sizes)})`);
    assert.ok(sizes.every((x, i) => i === 0 || x < sizes[i - 1]!), `each halving lowers the size (${JSON.stringify(sizes)})`);
    assert.equal(refusals, sizes.length, 'one refused read per halving');
    assert.ok(h.asked.slice(refusals).every((n) => n <= 512 * KiB), 'after the last halving no read is longer than 512 KiB');
    // the next reads of the disk are made at the new size at once
    const before = h.asked.length;
    await h.source.read(0, 2048 * KiB);
    assert.deepEqual(h.asked.slice(before), [512 * KiB, 512 * KiB, 512 * KiB, 512 * KiB]);
  });
}

it(`a host that refuses everything: the read size stops at ${MIN_NFC_READ / KiB} KiB and the error still goes up`, async () => {
  const h = await hostRefusingOver(0);
  after(() => h.local.close());
  await assert.rejects(readRetrying(h.source, 0, 1024 * KiB), NfcError);
  assert.equal(h.lines.map((l) => Number(l.readSize)).at(-1), MIN_NFC_READ);
});
