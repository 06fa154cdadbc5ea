import type { Command } from 'commander';
import { printResult, table, formatBytes } from '../output.ts';
import { addOptions, type OptionSpec } from '../options.ts';
import { UserError } from '../../util/errors.ts';
import { VCenter, VimFault, faultToUserError, resolveConnection, type ConnectionFlags, type SnapshotNode, type VmInfo } from '../../vsphere/index.ts';
import { inFolder, normalizeFolder } from '../../vsphere/vm-folder.ts';

const VCENTER_OPTIONS: readonly OptionSpec[] = [
  ['--server <url>', 'vCenter or ESXi host URL (https://HOST/sdk); env VMLIFT_SERVER'],
  ['--user <user>', 'vCenter user; env VMLIFT_USER'],
  ['--password-file <file>', 'file holding the password; env VMLIFT_PASSWORD_FILE or VMLIFT_PASSWORD; else prompted'],
  ['--thumbprint <hex>', 'pin the vCenter certificate (SHA-1 or SHA-256 thumbprint); env VMLIFT_THUMBPRINT'],
  ['--insecure', 'do not verify the vCenter certificate (warned; prefer --thumbprint)'],
  ['--config <file>', 'JSON file with server, user, passwordFile, thumbprint (default ~/.config/vmlift/vcenter.json)'],
  ['--json', 'print JSON'],
];

function conn(cmd: Command): Command {
  return addOptions(cmd, VCENTER_OPTIONS);
}

async function withVc<T>(o: ConnectionFlags, fn: (vc: VCenter) => Promise<T>): Promise<T> {
  const vc = await VCenter.connect(await resolveConnection(o));
  try {
    return await fn(vc);
  } catch (e) {
    throw e instanceof VimFault ? faultToUserError(e) : e;
  } finally {
    await vc.close();
  }
}

/** Task progress on a terminal ("  createSnapshot 40%"), nothing when piped or with --json. */
function progress(o: { json?: boolean }, label: string): { onProgress?: (p: number) => void } {
  if (o.json || !process.stderr.isTTY) return {};
  return { onProgress: (p) => process.stderr.write(`\r  ${label} ${p}%${p >= 100 ? '\n' : ''}`) };
}

function treeLines(nodes: SnapshotNode[], depth = 0): string[] {
  return nodes.flatMap((n) => [`${'  '.repeat(depth)}${n.name}  (${n.ref}, ${n.createTime}${n.quiesced ? ', quiesced' : ''})`, ...treeLines(n.children, depth + 1)]);
}
const countSnaps = (n: SnapshotNode[]): number => n.reduce((a, s) => a + 1 + countSnaps(s.children), 0);

function cbtState(vm: VmInfo): string {
  if (!vm.changeTrackingEnabled) return 'off';
  return vm.ctkEnabled && vm.disks.every((d) => d.ctkEnabled) ? 'on' : 'partial';
}

/** "/" for the vm folder itself, "Prod/shop (vApp)" for a vApp member, "-" when unknown. */
function folderLabel(v: VmInfo): string {
  if (v.folder === null || v.folder === undefined) return '-';
  const f = v.folder || '/';
  return v.vApp ? `${v.folder ? `${v.folder}/` : '/'}${v.vApp} (vApp)` : f;
}

function showVm(vm: VmInfo): string {
  const lines = [
    `${vm.name} (${vm.ref})`,
    `  power:        ${vm.powerState}`,
    `  guest:        ${vm.guestFullName || vm.guestId}`,
    `  hardware:     ${vm.hardwareVersion}`,
    `  host:         ${vm.host ? `${vm.host.name} (ESXi ${vm.host.version} build ${vm.host.build})` : 'unknown'}`,
    `  datacenter:   ${vm.datacenter ?? 'unknown'}`,
    ...(vm.folder !== undefined ? [`  folder:       ${folderLabel(vm)}`] : []),
    `  CBT:          ${cbtState(vm)} (changeTrackingEnabled=${vm.changeTrackingEnabled}, ctkEnabled=${vm.ctkConfig['ctkEnabled'] ?? 'unset'})`,
    `  snapshots:    ${countSnaps(vm.snapshots) || 'none'}${vm.consolidationNeeded ? ' (consolidation needed)' : ''}`,
    ...treeLines(vm.snapshots, 2).map((l) => `  ${l}`),
    '',
    table(['KEY', 'LABEL', 'BUS', 'CONTROLLER', 'CAPACITY', 'BACKING', 'MODE', 'RDM', 'CTK', 'FILE', 'CHANGE ID'],
      vm.disks.map((d) => [d.key, d.label, d.busId, d.controllerType, formatBytes(d.capacity), d.backingType, d.diskMode,
        d.compatibilityMode ?? '-', d.ctkEnabled ? 'TRUE' : '-', d.file, d.changeId ?? '-'])),
  ];
  return lines.join('\n');
}

export function register(program: Command): void {
  const vc = program.command('vc').description('vCenter: inventory, preflight, CBT, snapshots, changed areas');

  conn(vc.command('ls').description('list the virtual machines with their CBT and snapshot state'))
    .option('--folder <path>', 'only the VMs in this VM folder of the datacenter (Prod/Web) or below it')
    .action(async (o) => withVc(o, async (c) => {
      const inv = await c.inventory();
      const vms = o.folder === undefined ? inv.vms : inv.vms.filter((v) => inFolder(v.folder, o.folder));
      if (o.folder !== undefined && vms.length === 0) {
        const known = [...new Set(inv.vms.map((v) => v.folder).filter((f): f is string => !!f))].sort();
        throw new UserError('VC_FOLDER_EMPTY', `no virtual machine is in folder "${normalizeFolder(o.folder)}" or below it`,
          `give a VM folder path inside the datacenter as \`vmlift vc ls\` shows it in FOLDER${known.length ? ` (${known.slice(0, 10).join(', ')})` : ''}; names are case-sensitive`);
      }
      printResult(o.json, vms, (list) => table(['NAME', 'REF', 'POWER', 'HW', 'GUEST', 'HOST', 'ESXI', 'CBT', 'DISKS', 'SIZE', 'SNAPSHOTS', 'FOLDER', 'DATACENTER'],
        list.map((v) => [v.systemVm ? `${v.name} (system VM)` : v.name, v.ref, v.powerState, v.hardwareVersion, v.guestId, v.host?.name ?? '-', v.host?.version ?? '-', cbtState(v),
          v.disks.length, formatBytes(v.disks.reduce((n, d) => n + d.capacity, 0)), countSnaps(v.snapshots), folderLabel(v), v.datacenter ?? '-'])));
    }));

  conn(vc.command('show').argument('<vm>', 'VM name or managed object id (vm-42)').description('everything vmlift knows about one VM'))
    .action(async (name: string, o) => withVc(o, async (c) => printResult(o.json, await c.vm(name), showVm)));

  conn(vc.command('preflight').argument('<vm>').description('can vmlift replicate this VM? each failed check says how to fix it'))
    .action(async (name: string, o) => withVc(o, async (c) => {
      const r = await c.preflight(name);
      printResult(o.json, r, (x) => [
        `preflight of ${x.vm}: ${x.ok ? 'OK' : 'FAILED'}`,
        ...x.checks.map((ch) => `  ${ch.ok ? 'ok  ' : 'FAIL'}  ${ch.name}: ${ch.message}${ch.fix ? `\n        fix: ${ch.fix}` : ''}`),
      ].join('\n'));
      if (!r.ok) process.exitCode = 1;
    }));

  const cbt = vc.command('cbt').description('changed block tracking');
  for (const on of [true, false]) {
    conn(cbt.command(on ? 'enable' : 'disable').argument('<vm>')
      .description(on ? 'enable CBT (changeTrackingEnabled, ctkEnabled, <bus>.ctkEnabled per disk; stun/unstun when running); idempotent' : 'disable CBT'))
      .action(async (name: string, o) => withVc(o, async (c) => {
        const r = on ? await c.enableCbt(name, progress(o, 'reconfigure')) : await c.disableCbt(name, progress(o, 'reconfigure'));
        printResult(o.json, r, (x) => `${x.vm}: CBT ${on ? 'enabled' : 'disabled'}${x.changed ? '' : ' (already; nothing changed)'}${x.stunned ? ' (stun/unstun done)' : ''}\n` +
          Object.entries(x.settings).map(([k, v]) => `  ${k} = ${v}`).join('\n'));
      }));
  }

  conn(vc.command('snapshots').argument('<vm>').description('list snapshots; --sweep removes leftover vmlift- snapshots and consolidates'))
    .option('--sweep', 'remove snapshots whose name starts with the prefix')
    .option('--prefix <p>', 'snapshot name prefix of --sweep', 'vmlift-')
    .action(async (name: string, o) => withVc(o, async (c) => {
      let swept: { removed: string[]; consolidated: boolean } | undefined;
      if (o.sweep) swept = await c.sweepSnapshots(name, o.prefix, progress(o, 'remove snapshot'));
      const { vm, snapshots } = await c.snapshots(name);
      printResult(o.json, { vm: vm.name, ref: vm.ref, snapshots, consolidationNeeded: vm.consolidationNeeded, swept }, (x) => [
        ...(swept ? [`removed ${swept.removed.length} snapshot(s)${swept.removed.length ? `: ${swept.removed.join(', ')}` : ''}${swept.consolidated ? '; consolidated' : ''}`] : []),
        `${x.vm}: ${countSnaps(x.snapshots) || 'no'} snapshot(s)`, ...treeLines(x.snapshots, 1)].join('\n'));
    }));

  conn(vc.command('changed-areas').argument('<vm>').description('QueryChangedDiskAreas of one disk since a changeId ("*": allocated areas)'))
    .requiredOption('--disk <key>', 'disk device key (see `vmlift vc show VM`)')
    .requiredOption('--change-id <id>', 'changeId of an earlier snapshot disk, quoted as vCenter writes it ("52 de … 65 63/81"), or "*"')
    .option('--snapshot <ref>', 'snapshot to query (default: take a temporary vmlift- snapshot and remove it after)')
    .action(async (name: string, o) => withVc(o, async (c) => {
      const key = Number(o.disk);
      if (!Number.isInteger(key) || key < 0) throw new UserError('VC_DISK_KEY', `--disk ${o.disk} is not a device key`, 'give the numeric key shown by `vmlift vc show VM` (2000, 2001, …)');
      const vm = await c.vm(name);
      if (!vm.disks.some((d) => d.key === key)) {
        throw new UserError('VC_DISK_NOT_FOUND', `${vm.name} has no disk with key ${key} (disks: ${vm.disks.map((d) => d.key).join(', ')})`, 'pick a key shown by `vmlift vc show VM`');
      }
      let snap = o.snapshot as string | undefined;
      const temporary = !snap;
      if (!snap) snap = (await c.createSnapshot(vm.ref, `vmlift-query-${Date.now()}`, { quiesce: false }, progress(o, 'snapshot'))).ref;
      try {
        const disk = (await c.snapshotDisks(snap)).find((d) => d.key === key)!;
        const r = await c.changedAreas(vm.ref, snap, key, o.changeId, disk.capacity);
        printResult(o.json, { vm: vm.name, disk: key, snapshot: snap, snapshotChangeId: disk.changeId, sinceChangeId: o.changeId, capacity: disk.capacity, ...r },
          (x) => [`${x.vm} disk ${x.disk} since ${x.sinceChangeId} (snapshot ${x.snapshot}, changeId ${x.snapshotChangeId ?? 'none'}):`,
            `  ${x.areas.length} area(s), ${formatBytes(x.bytes)} of ${formatBytes(x.capacity)}, ${x.calls} call(s)`,
            ...x.areas.slice(0, 50).map((a) => `  ${a.offset}+${a.length}`), ...(x.areas.length > 50 ? [`  … ${x.areas.length - 50} more (use --json)`] : [])].join('\n'));
      } finally {
        if (temporary) await c.removeSnapshot(vm.ref, snap);
      }
    }));
}
