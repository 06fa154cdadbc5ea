/**
 * The job's transport, honoured per disk, against the lab: nbd through a server the connector starts
 * (lab/nbd-view.sh serves the lab's snapshot view through real nbdkit, the same code path as the
 * default `nbdkit vddk`), http, and auto's choice with and without VDDK (the libvixDiskLib double).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { startRig, settings, liveSha, imageSha, guestWrites, MiB, type EngineRig } from './harness.ts';
import { transportDiskOpener } from '../../src/cli/wiring.ts';
import type { DiskOpener } from '../../src/engine/services.ts';
import type { Transport } from '../../src/state/types.ts';
import { shutdownVddk } from '../../src/source/vddk/index.ts';
import { silentLogger } from '../../src/util/log.ts';
import { wrapSource } from '../../src/source/wrap.ts';
import { PROJECT_ROOT } from '../../src/util/root.ts';

type Openers = Record<'labNbd' | 'defaultNbd' | 'vddk', ReturnType<typeof transportDiskOpener>>;

/** Every process below this one (the lab, its nbdkit exports, the connector's NBD servers) and its argv. */
function descendants(): { pid: number; argv: string[] }[] {
  const parent = new Map<number, number>();
  for (const n of readdirSync('/proc')) {
    if (!/^\d+$/.test(n)) continue;
    try { const st = readFileSync(`/proc/${n}/stat`, 'utf8'); parent.set(Number(n), Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1])); } catch { /* gone */ }
  }
  const out: { pid: number; argv: string[] }[] = [];
  const walk = (pid: number) => {
    for (const [c, p] of parent) {
      if (p !== pid) continue;
      try { out.push({ pid: c, argv: readFileSync(`/proc/${c}/cmdline`, 'utf8').split('\0').filter(Boolean) }); } catch { /* gone */ }
      walk(c);
    }
  };
  walk(process.pid);
  return out;
}

async function rigWithOpeners(): Promise<{ rig: EngineRig; openers: Openers; use(k: keyof Openers): void }> {
  execFileSync(path.join(PROJECT_ROOT, 'native/build.sh'));
  let current: DiskOpener | undefined;
  let openers: Openers | undefined;
  const rig = await startRig({
    vddkMap: true,
    opener: ({ vc, port, lab, dir }) => {
      const conn = { user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } };
      // The VDDK double serves the lab's point-in-time view of (VM, snapshot, disk path) from the lab's map.
      const vddkConfigFile = path.join(dir, 'vddk.conf');
      writeFileSync(vddkConfigFile, `lab_map=${lab.vddkMapFile}\n`, { mode: 0o600 });
      const nbdCommand = ['bash', path.join(PROJECT_ROOT, 'lab/nbd-view.sh'), lab.dir, '{socket}', '{vm}', '{snapshot}', '{diskKey}'];
      openers = {
        labNbd: transportDiskOpener(vc, port, conn, { nbdCommand, nbdDir: path.join(dir, 'nbd') }, 2 * MiB, silentLogger),
        defaultNbd: transportDiskOpener(vc, port, conn, { nbdDir: path.join(dir, 'nbd-default') }, 2 * MiB, silentLogger),
        vddk: transportDiskOpener(vc, port, conn, {
          vddkLibdir: path.join(PROJECT_ROOT, 'native/build/vddk-double'), vddkConfigFile, nbdCommand, nbdDir: path.join(dir, 'nbd-vddk'),
        }, 2 * MiB, silentLogger),
      };
      current = openers.labNbd;
      return {
        open: (...a) => current!.open(...a),
        close: async () => { for (const o of Object.values(openers!)) await o.close(); shutdownVddk(); },
      };
    },
  });
  return { rig, openers: openers!, use: (k) => { current = openers![k]; } };
}

/** Starts a job over two-disks, runs its full cycle with guest writes before and during it, and checks the image. */
async function fullCycle(rig: EngineRig, id: string, transport: Transport): Promise<void> {
  const { lab, engine, rx } = rig;
  const vm = lab.vm('two-disks');
  for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 20);
  const expected = await Promise.all(vm.disks.map((d) => liveSha(lab, vm.name, d.key, d.capacity)));
  rig.hooks.afterSnapshot = async () => { for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 8); };
  engine.createJob({ id, vmRef: vm.moref, settings: settings({ transport }) });
  engine.start(id);
  await engine.runNow(id);
  rig.hooks.afterSnapshot = undefined;
  const job = engine.getJob(id);
  assert.equal(job.state, 'waiting', JSON.stringify(job.error));
  const [c] = rig.state.listCycles(id);
  for (const [i, d] of vm.disks.entries()) {
    assert.equal(await imageSha(rx, job.sourceId, c!.imageId!, i, d.capacity), expected[i], `${transport}: disk ${d.key} of the full image is the disk at its snapshot`);
  }
}

test('a job through each transport (nbd via a server the connector starts, http, vddk through the libvixDiskLib double) completes with images bit-identical to each snapshot', async (t) => {
  const { rig, openers, use } = await rigWithOpeners();
  t.after(() => rig.close());
  const { lab, engine, rx } = rig;
  const vm = lab.vm('two-disks');
  const labToken = (JSON.parse(readFileSync(path.join(lab.dir, 'lab.json'), 'utf8')) as { token: string }).token;
  for (const transport of ['nbd', 'http', 'vddk'] as const) {
    use(transport === 'vddk' ? 'vddk' : 'labNbd');
    const id = `via-${transport}`;
    const seen = new Map<number, string[]>();
    const scan = setInterval(() => { for (const p of descendants()) seen.set(p.pid, p.argv); }, 20);
    try {
      await fullCycle(rig, id, transport);
      // An incremental with guest writes during it, then complete (the final cycle).
      for (const final of [false, true]) {
        await guestWrites(lab, vm.name, vm.disks[0]!.key, vm.disks[0]!.capacity, 12);
        const expected = await Promise.all(vm.disks.map((d) => liveSha(lab, vm.name, d.key, d.capacity)));
        rig.hooks.afterSnapshot = async () => { for (const d of vm.disks) await guestWrites(lab, vm.name, d.key, d.capacity, 6); };
        if (final) engine.complete(id); else engine.requestSync(id);
        await engine.runNow(id);
        rig.hooks.afterSnapshot = undefined;
        const job = engine.getJob(id);
        assert.equal(job.state, final ? 'completed' : 'waiting', JSON.stringify(job.error));
        const [c] = rig.state.listCycles(id);
        assert.equal(c!.kind, final ? 'final' : 'incremental');
        for (const [i, d] of vm.disks.entries()) {
          assert.equal(await imageSha(rx, job.sourceId, c!.imageId!, i, d.capacity), expected[i], `${transport}: disk ${d.key} of cycle ${c!.seq}`);
        }
      }
    } finally {
      clearInterval(scan);
    }
    const disks = rig.state.getDisks(id);
    assert.deepEqual(disks.map((d) => d.transport), [transport, transport], 'each disk records its transport');
    assert.ok(disks.every((d) => d.transportReason?.startsWith(`the job's transport is ${transport}`)), JSON.stringify(disks));
    for (const [pid, argv] of seen) {
      for (const secret of [lab.password, labToken]) assert.ok(!argv.join(' ').includes(secret), `no secret on the argv of ${pid}: ${argv.join(' ')}`);
    }
    const servers = [...seen.values()].filter((a) => a[0] === 'nbdkit' && a.includes('--unix'));
    if (transport === 'nbd') {
      assert.ok(servers.length >= 2, `the connector started an NBD server per disk and cycle (saw ${servers.length})`);
      assert.ok(servers.every((a) => a[a.indexOf('--unix') + 1]!.startsWith(openers.labNbd.nbd.dir)), 'on sockets in its own folder');
    } else {
      assert.equal(servers.length, 0, `${transport} starts no NBD server`);
    }
    assert.deepEqual(openers.labNbd.nbd.pids(), [], 'no NBD server is left running');
    assert.deepEqual(readdirSync(openers.labNbd.nbd.dir), [], 'no socket, pid or password file is left');
    assert.equal((await rig.vc.snapshots(vm.moref)).snapshots.length, 0);
  }
});

test('auto picks vddk when libvixDiskLib loads, else nbd where the connector can start a server, else http, with the reason; an explicit transport that cannot read fails with the fix', async (t) => {
  const { rig, use } = await rigWithOpeners();
  t.after(() => rig.close());
  const { engine } = rig;

  use('labNbd');
  await fullCycle(rig, 'auto-nbd', 'auto');
  let d = rig.state.getDisks('auto-nbd');
  assert.deepEqual(d.map((x) => x.transport), ['nbd', 'nbd']);
  assert.match(d[0]!.transportReason!, /^auto: no VDDK \(no VDDK libdir is configured.*\); NBD through the configured NBD server command \(bash\)/);

  use('defaultNbd');
  await fullCycle(rig, 'auto-http', 'auto');
  d = rig.state.getDisks('auto-http');
  assert.deepEqual(d.map((x) => x.transport), ['http', 'http']);
  assert.match(d[0]!.transportReason!, /^auto: no VDDK .*, no NBD server \(nbdkit has no usable vddk plugin.*\); flat extent, safe over HTTP/);

  // The libvixDiskLib double: the choice and its reason (its reads of the lab's snapshot views come with the double's lab map).
  use('vddk');
  await fullCycle(rig, 'auto-vddk', 'auto');
  d = rig.state.getDisks('auto-vddk');
  assert.deepEqual(d.map((x) => x.transport), ['vddk', 'vddk']);
  assert.match(d[0]!.transportReason!, /^auto: libvixDiskLib from .*native\/build\/vddk-double\/.*libvixDiskLib\.so/);

  // Explicit transports that cannot read: the disk fails with the cause and the fix, and no snapshot is left.
  use('defaultNbd');
  const vm = rig.lab.vm('two-disks');
  for (const [id, transport, code, fix] of [['explicit-vddk', 'vddk', 'VDDK_UNAVAILABLE', /--vddk-libdir/], ['explicit-nbd', 'nbd', 'NBD_NO_SERVER', /nbd.*command/]] as const) {
    engine.createJob({ id, vmRef: vm.moref, settings: settings({ transport }) });
    engine.start(id);
    await engine.runNow(id);
    const job = engine.getJob(id);
    assert.equal(job.state, 'error');
    assert.equal(job.error?.step, 'transfer');
    assert.equal(job.error?.code, code);
    assert.match(job.error!.message, new RegExp(`disk \\d+ of ${vm.moref}: the job's transport is ${transport}`));
    assert.match(job.error!.fix ?? '', fix);
    assert.equal((await rig.vc.snapshots(vm.moref)).snapshots.length, 0);
  }
});

test('NFC resource errors during reads lower the ESXi host\'s disk limit, the connector backs off and the job completes with a correct image', async (t) => {
  // Stands in for the VDDK double's NFC fault switch: the first reads of each disk fail as VDDK reports NFC's "failed to allocate".
  let injected = 0;
  const rig = await startRig({
    nfc: { backoffMs: 50, maxBackoffMs: 200, recoveryMs: 60_000 },
    opener: ({ vc, port, lab, dir }) => {
      const inner = transportDiskOpener(vc, port, { user: lab.user, password: lab.password, trust: { thumbprint: lab.thumbprint } },
        { nbdDir: path.join(dir, 'nbd') }, 2 * MiB, silentLogger);
      return {
        async open(...a) {
          const s = await inner.open(...a);
          let fail = 2;
          const nfc = () => {
            injected++;
            return Object.assign(new Error('source read failed'), { code: 'SOURCE_READ', cause: Object.assign(new Error('NFC error 5: Failed to allocate the requested memory'), { code: 'VDDK_NFC_RESOURCE', transient: true }) });
          };
          return wrapSource(s, {
            read: async (o, l) => { if (fail-- > 0) throw nfc(); return s.read(o, l); },
            readInto: s.readInto ? async (o, b) => { if (fail-- > 0) throw nfc(); return s.readInto!(o, b); } : undefined,
          });
        },
        close: () => inner.close(),
      };
    },
  });
  t.after(() => rig.close());
  await fullCycle(rig, 'nfc', 'http');
  assert.equal(injected, 4, 'two NFC errors per disk were injected');
  const [c] = rig.state.listCycles('nfc');
  assert.equal(c!.state, 'committed');
  assert.equal(rig.engine.getJob('nfc').error, null, 'the job did not fail, nor record an error');
  const host = await rig.port.hostOf(rig.lab.vm('two-disks').moref);
  assert.ok(rig.limiter.hostLimits()[host]! < 8, `the host's disk limit was lowered (${JSON.stringify(rig.limiter.hostLimits())})`);
});
