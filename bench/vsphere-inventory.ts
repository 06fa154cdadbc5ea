/**
 * Inventory benchmark: the whole inventory of N lab VMs through the PropertyCollector, which pages
 * as vCenter does (the lab's default: 100 objects per page without maxObjects).
 * In the same run, over the same lab, best and median of R rounds (after a warm-up) of:
 *   vmlift      vc.inventory(): lean XML path, next page in flight while one is parsed, VmInfo conversion
 *               (and the CPU seconds this process spent on it: on a shared machine the steadiest figure)
 *   node-soap   the same RetrievePropertiesEx chain parsed by node-soap, as vmlift did before (no conversion)
 *   floor       the same chain with no parsing at all (answers fetched as text): the lab's and the wire's share
 *   govmomi     the same request by govmomi's own Go client (lab/peer.go, typed decode), one process per round
 *   node --import tsx bench/vsphere-inventory.ts [N1 N2 ...]   (default 100 1000; env ROUNDS=5, PAGE_SIZE=100)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { startLab, labBinary } from '../lab/lab.ts';
import { VCenter, methods } from '../src/vsphere/index.ts';
import { INVENTORY_TYPES, inventorySpec } from '../src/vsphere/inventory.ts';
import { arr, morOf, str } from '../src/vsphere/convert.ts';

const counts = process.argv.slice(2).map(Number).filter((n) => n > 0);
if (counts.length === 0) counts.push(100, 1000);
const ROUNDS = Number(process.env.ROUNDS ?? 5);
const PAGE = Number(process.env.PAGE_SIZE ?? 100);

interface Stat { best: number; median: number }
const stat = (xs: number[]): Stat => {
  const s = [...xs].sort((a, b) => a - b);
  return { best: s[0]!, median: s[Math.floor(s.length / 2)]! };
};
const secs = (t: bigint) => Number(process.hrtime.bigint() - t) / 1e9;

/** The inventory's RetrievePropertiesEx chain, answers parsed by node-soap (`soap`) or not at all (`text`). */
async function chain(vc: VCenter, mode: 'soap' | 'text'): Promise<number> {
  const s = vc.session;
  const view = await methods.createContainerView(s, INVENTORY_TYPES);
  const pc = morOf(s.content.propertyCollector);
  let objects = 0;
  try {
    const args = { _this: pc, specSet: [inventorySpec(view)], options: {} };
    if (mode === 'soap') {
      let res = await s.call('RetrievePropertiesEx', args);
      for (;;) {
        objects += arr(res.returnval?.objects).length;
        const token = str(res.returnval?.token);
        if (!token) break;
        res = await s.call('ContinueRetrievePropertiesEx', { _this: pc, token });
      }
    } else {
      let xml = await s.callText('RetrievePropertiesEx', args);
      for (;;) {
        objects += xml.split('<objects>').length - 1;
        const token = /<token>([^<]*)<\/token>/.exec(xml.slice(0, 2000))?.[1];
        if (!token) break;
        xml = await s.callText('ContinueRetrievePropertiesEx', { _this: pc, token });
      }
    }
  } finally {
    await methods.destroyView(s, view);
  }
  return objects;
}

interface Row { cpu: Stat; vms: number; rt: number; bytes: number; disks: number; vmlift: Stat; soap: Stat; floor: Stat; govmomi: Stat }
const rows: Row[] = [];

for (const n of counts) {
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-bench-inv-'));
  const t0 = Date.now();
  const lab = await startLab({ dir, vms: n - 7 > 0 ? n - 7 : n, diskMb: 16, timeoutMs: 600_000, pageSize: PAGE }); // the lab adds 7 shaped VMs
  process.stderr.write(`lab with ${lab.vms.length} VMs ready in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  try {
    const vc = await VCenter.connect({ server: lab.url, user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } });
    await vc.inventory(); await chain(vc, 'soap'); await chain(vc, 'text'); // warm-up (parsers, JIT, the simulator)
    const cpu: number[] = [];
    const t = { vmlift: [] as number[], soap: [] as number[], floor: [] as number[], govmomi: [] as number[] };
    // Peer: govmomi's Go client, one process per round (it warms up, then times one inventory).
    const peer = async () => {
      const { stdout } = await promisify(execFile)(labBinary, ['-peer-inventory', lab.url, '-user', lab.user, '-password-file', lab.passwordFile],
        { env: { ...process.env, VMLIFT_PEER_ROUNDS: '1' } });
      const p = JSON.parse(stdout) as { seconds: number; objects: number };
      t.govmomi.push(p.seconds);
    };
    let rt = 0, bytes = 0, disks = 0;
    for (let i = 0; i < ROUNDS; i++) { // interleaved, so a busy moment of the shared machine hits every contender
      const rt0 = vc.roundTrips, b0 = vc.session.stats.bytesReceived;
      let s0 = process.hrtime.bigint();
      const c0 = process.cpuUsage();
      const inv = await vc.inventory();
      t.vmlift.push(secs(s0));
      const c = process.cpuUsage(c0);
      cpu.push((c.user + c.system) / 1e6);
      if (inv.vms.length !== lab.vms.length) throw new Error(`inventory returned ${inv.vms.length} of ${lab.vms.length} VMs`);
      rt = vc.roundTrips - rt0; bytes = vc.session.stats.bytesReceived - b0; disks = inv.vms.reduce((k, v) => k + v.disks.length, 0);
      s0 = process.hrtime.bigint(); await chain(vc, 'soap'); t.soap.push(secs(s0));
      s0 = process.hrtime.bigint(); await chain(vc, 'text'); t.floor.push(secs(s0));
      await peer();
    }
    rows.push({ cpu: stat(cpu), vms: lab.vms.length, rt, bytes, disks, vmlift: stat(t.vmlift), soap: stat(t.soap), floor: stat(t.floor), govmomi: stat(t.govmomi) });
    await vc.close();
  } finally {
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

const f = (s: Stat) => `${s.best.toFixed(2)}/${s.median.toFixed(2)}`.padEnd(12);
console.log(`${new Date().toISOString()}  page size ${PAGE}, ${ROUNDS} rounds; seconds best/median`);
console.log('VMs     inv RTs  MiB    vmlift      (its CPU)   node-soap   floor       govmomi     vmlift/govmomi (best, median)');
for (const r of rows) {
  console.log(`${String(r.vms).padEnd(8)}${String(r.rt).padEnd(9)}${(r.bytes / 2 ** 20).toFixed(1).padEnd(7)}${f(r.vmlift)}${f(r.cpu)}${f(r.soap)}${f(r.floor)}${f(r.govmomi)}` +
    `${(r.vmlift.best / r.govmomi.best).toFixed(2)}×, ${(r.vmlift.median / r.govmomi.median).toFixed(2)}×`);
}
