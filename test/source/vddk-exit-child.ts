/** Child of vddk.test.ts: starts VDDK reads, then ends the process (throw / exit) with them in flight. */
import path from 'node:path';
import { VddkSource } from '../../src/source/vddk/index.ts';

const [file, how] = process.argv.slice(2);
const v = await VddkSource.open({ libdir: path.resolve(import.meta.dirname, '../../native/build/vddk-double'), diskPath: file! });
for (let i = 0; i < 8; i++) void v.read(i * (2 << 20), 2 << 20).catch(() => undefined);
if (how === 'throw') throw new Error('the caller failed with VDDK reads in flight');
process.exit(3);
