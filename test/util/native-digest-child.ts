/**
 * Child of native-digest-impl.test.ts: the native digester's results for the cases in a file, as
 * JSON on stdout, so each implementation (VMLIFT_DIGEST_IMPL, read when the library loads) runs in
 * a process of its own.   node --import tsx native-digest-child.ts CASES.bin LENGTHS.json
 */
import { readFileSync } from 'node:fs';
import { nativeDigest } from '../../src/util/native-digest.ts';
import { wholeTreeBlocks } from '../../src/util/tree-digest.ts';

const [file, lengthsFile] = process.argv.slice(2);
const all = readFileSync(file!);
const lengths = JSON.parse(readFileSync(lengthsFile!, 'utf8')) as number[];
const native = nativeDigest();
if (!native) throw new Error('native digester not built');
const out = [];
let at = 0;
for (const len of lengths) {
  const data = all.subarray(at, at + len);
  at += len;
  const full = await native.blocks(data, 4096, 32, wholeTreeBlocks(len));
  const pieces = await native.blocks(data, 4096, 16, 65536);
  const odd = await native.blocks(data, 512, 32);
  out.push({
    len,
    blocks: full.digests.toString('hex'),
    zero: [...full.zero].join(''),
    whole: full.pieceDigests!.toString('hex'),
    kept16: pieces.digests.toString('hex'),
    pieces: pieces.pieceDigests!.toString('hex'),
    blocks512: odd.digests.toString('hex'),
    tree: (await native.tree(data)).toString('hex'),
    sha256: (await native.sha256(data)).toString('hex'),
  });
}
process.stdout.write(JSON.stringify({ implementation: native.implementation, probe: native.probe, out }));
