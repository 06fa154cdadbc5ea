/**
 * Inventory benchmark: the whole inventory of N lab VMs through the PropertyCollector.
 * Reports seconds and SOAP round trips for two VM counts, to show the round trips do not grow with N.
 *   node --import tsx bench/vsphere-inventory.ts [N1 N2]   (default 100 1000)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startLab, labBinary } from '../lab/lab.ts';
import { VCenter } from '../src/vsphere/index.ts';

const counts = process.argv.slice(2).map(Number).filter((n) => n > 0);
if (counts.length === 0) counts.push(100, 1000);
const rows: { vms: number; connectRoundTrips: number; inventoryRoundTrips: number; seconds: number; bytes: number; disks: number; peerSeconds: number }[] = [];

for (const n of counts) {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-bench-inv-'));
  const t0 = Date.now();
  const lab = await startLab({ dir, vms: n - 7 > 0 ? n - 7 : n, diskMb: 16, timeoutMs: 600_000 }); // the lab adds 7 shaped VMs
  process.stderr.write(`lab with ${lab.vms.length} VMs ready in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  try {
    const vc = await VCenter.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } });
    const connectRt = vc.roundTrips;
    await vc.inventory(); // warm-up (parser, JIT)
    const best = { s: Infinity, rt: 0, bytes: 0, disks: 0 };
    for (let i = 0; i < 3; i++) {
      const rt0 = vc.roundTrips, b0 = vc.session.stats.bytesReceived;
      const t = process.hrtime.bigint();
      const inv = await vc.inventory();
      const s = Number(process.hrtime.bigint() - t) / 1e9;
      if (inv.vms.length !== lab.vms.length) throw new Error(`inventory returned ${inv.vms.length} of ${lab.vms.length} VMs`);
      if (s < best.s) Object.assign(best, { s, rt: vc.roundTrips - rt0, bytes: vc.session.stats.bytesReceived - b0, disks: inv.vms.reduce((k, v) => k + v.disks.length, 0) });
    }
    // Peer: the same request by govmomi's Go client (typed decode), best of 3 after a warm-up.
    const { stdout } = await promisify(execFile)(labBinary, ['-peer-inventory', lab.url, '-user', lab.user, '-password-file', lab.passwordFile]);
    const peer = JSON.parse(stdout) as { seconds: number; objects: number };
    rows.push({ vms: lab.vms.length, connectRoundTrips: connectRt, inventoryRoundTrips: best.rt, seconds: best.s, bytes: best.bytes, disks: best.disks, peerSeconds: peer.seconds });
    await vc.close();
  } finally {
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

console.log('VMs     connect RTs  inventory RTs  seconds  response MiB  disks  govmomi s  vmlift/govmomi');
for (const r of rows) {
  console.log(`${String(r.vms).padEnd(8)}${String(r.connectRoundTrips).padEnd(13)}${String(r.inventoryRoundTrips).padEnd(15)}${r.seconds.toFixed(2).padEnd(9)}` +
    `${(r.bytes / 2 ** 20).toFixed(1).padEnd(14)}${String(r.disks).padEnd(7)}${r.peerSeconds.toFixed(2).padEnd(11)}${(r.seconds / r.peerSeconds).toFixed(2)}×`);
}
if (rows.length >= 2) {
  const [a, b] = [rows[0]!, rows[rows.length - 1]!];
  console.log(`round trips ${a.inventoryRoundTrips} → ${b.inventoryRoundTrips} for ${a.vms} → ${b.vms} VMs (${b.inventoryRoundTrips === a.inventoryRoundTrips ? 'constant' : 'NOT constant'}); ` +
    `time ratio ${(b.seconds / a.seconds).toFixed(1)}× for ${(b.vms / a.vms).toFixed(1)}× VMs; target ≤ 5 s at 1,000: ${b.seconds <= 5 ? 'met' : 'MISSED'}`);
}
