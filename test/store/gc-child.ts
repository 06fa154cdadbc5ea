// Child process for packs.test.ts: one garbage collection of the store at argv[2] (repack threshold
// argv[3]), printing its result; VMLIFT_TEST_CRASH_AT kills it at a crash point.
import { openImageStore } from '../../src/store/index.ts';

const [root, below] = process.argv.slice(2) as [string, string | undefined];
const store = await openImageStore(root, below ? { repackBelow: Number(below) } : {});
process.stdout.write(`${JSON.stringify(await store.gc())}\n`);
await store.close();
