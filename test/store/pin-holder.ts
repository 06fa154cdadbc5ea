// Child process for retention.test.ts: pins an image the way export/verify do, then waits to be killed.
import { Layout } from '../../src/store/layout.ts';
import { pinImage } from '../../src/store/pins.ts';

const [root, src, image] = process.argv.slice(2) as [string, string, string];
await pinImage(new Layout(root), src, image);
process.stdout.write('pinned\n');
setInterval(() => {}, 1000);
