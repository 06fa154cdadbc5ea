import { imageDisks } from '../image-disks.ts';
import type { Command } from 'commander';
import { resolve, join } from 'node:path';
import { tmpdir } from 'node:os';
import { stat } from 'node:fs/promises';
import { CodedError, UserError } from '../../util/errors.ts';
import { assertId } from '../../util/ids.ts';
import { printResult, table, formatBytes } from '../output.ts';
import { migrateStore, openImageStore, StoreError, type ImageStore } from '../../store/index.ts';
import type { ImageInfo } from '../../model/images.ts';
import type { InspectReport } from '../../target/inspect.ts';

interface Common { dataDir: string; json?: boolean }
interface ImageFlags extends Common { source: string; image: string }

/** Fixes in this command's terms (its flags), where they say more than the store's own. */
const FIXES: Record<string, string> = {
  NOT_FOUND: 'list what exists with `vmlift image ls --data-dir DIR` (and `vmlift image show` for the disks of an image)',
  OUT_OF_RANGE: 'use offsets within the disk capacity shown by `vmlift image show`',
  BAD_STORE: 'point --data-dir at a receiver data folder made by this vmlift version',
};

/** Store errors as user errors: cause and (unless this command says it better) fix from the store. */
async function run<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof StoreError) throw new UserError(e.code, e.message, FIXES[e.code] ?? e.fix, { cause: e });
    throw e;
  }
}

async function openStore(dataDir: string): Promise<ImageStore> {
  const dir = resolve(dataDir);
  const st = await stat(dir).catch(() => null);
  if (!st?.isDirectory()) {
    throw new UserError('NO_DATA_DIR', `data folder ${dir} does not exist`, 'give --data-dir the folder the receiver runs with (vmlift receiver serve --data-dir DIR)');
  }
  return openImageStore(join(dir, 'store'));
}

async function knownSource(store: ImageStore, src: string): Promise<void> {
  assertId(src, 'source id');
  const sources = await store.listSources();
  if (!sources.includes(src)) {
    throw new UserError('NOT_FOUND', `source ${src} has no images in ${store.root}`,
      sources.length ? `known sources: ${sources.join(', ')}` : 'no source has synced to this receiver yet');
  }
}

function intArg(v: string, what: string): number {
  if (!/^\d+$/.test(v)) throw new UserError('BAD_OPTION', `${what} "${v}" is not a whole number`, `give ${what} as a whole number (0, 1, ...)`);
  return Number(v);
}

function imageLine(i: ImageInfo): (string | number)[] {
  const cap = i.disks.reduce((a, d) => a + d.capacity, 0);
  const alloc = i.disks.reduce((a, d) => a + d.allocatedBytes, 0);
  return [i.sourceId, i.imageId, i.committedAt, imageDisks(i), formatBytes(cap), formatBytes(alloc), i.baseImageId ?? '-'];
}

export function register(program: Command): void {
  const img = program.command('image').description('list, check, export and remove the images a receiver keeps');
  const dataDir = '--data-dir <dir>';
  const dataDirHelp = 'the receiver data folder (the store is DIR/store)';

  img.command('ls')
    .description('list images (all sources, or one) with their sizes and the store\'s dedup ratio')
    .requiredOption(dataDir, dataDirHelp)
    .option('--source <id>', 'only this source')
    .option('--json', 'print JSON')
    .action((o: Common & { source?: string }) => run(async () => {
      const store = await openStore(o.dataDir);
      if (o.source) await knownSource(store, o.source);
      const sources = o.source ? [o.source] : await store.listSources();
      const images: ImageInfo[] = [];
      const openCycles: { sourceId: string; cycleId: string }[] = [];
      for (const s of sources) {
        images.push(...await store.listImages(s));
        for (const c of await store.openCycles(s)) openCycles.push({ sourceId: s, cycleId: c });
      }
      const stats = await store.stats();
      printResult(o.json, { images, openCycles, store: { root: store.root, chunkSize: store.chunkSize, ...stats } }, (v) =>
        [
          v.images.length ? table(['SOURCE', 'IMAGE', 'COMMITTED', 'DISKS', 'SIZE', 'ALLOCATED', 'BASE'], v.images.map(imageLine)) : 'no images',
          ...(v.openCycles.length ? [`open cycles: ${v.openCycles.map((c) => `${c.sourceId}/${c.cycleId}`).join(', ')}`] : []),
          `store: ${formatBytes(v.store.logicalBytes)} of images in ${formatBytes(v.store.storedBytes)} of chunks (${v.store.chunks} chunks), dedup ratio ${v.store.dedupRatio.toFixed(2)}`,
        ].join('\n'));
    }));

  img.command('migrate')
    .description('convert a store of an older format in place (stop the receiver first; crash-safe: run it again if it is interrupted)')
    .requiredOption(dataDir, dataDirHelp)
    .option('--json', 'print JSON')
    .action((o: Common) => run(async () => {
      const dir = resolve(o.dataDir);
      if (!(await stat(dir).catch(() => null))?.isDirectory()) {
        throw new UserError('NO_DATA_DIR', `data folder ${dir} does not exist`, 'give --data-dir the folder the receiver runs with (vmlift receiver serve --data-dir DIR)');
      }
      const r = await migrateStore(join(dir, 'store'));
      printResult(o.json, r, (v) => v.from === v.to
        ? `store ${v.root} is already store format ${v.to}`
        : `store ${v.root}: format ${v.from} -> ${v.to}; ${v.chunks} chunks (${formatBytes(v.bytes)}) copied into ${v.packs} packs`
          + (v.alreadyPacked ? `, ${v.alreadyPacked} already packed by an earlier run` : '')
          + `, renamed to tree digests; ${v.rewrittenFiles} index, overlay and journal files rewritten`
          + (v.refitted ? `, ${v.refitted} chunks stored again at the length of the slot that reads them` : '')
          + (v.missing ? `\nwarning: ${v.missing} slots name a chunk the old store did not have; \`vmlift image verify\` names them (their images were damaged before the migration)` : ''));
    }));

  /** A command on one image of one source: --data-dir, --source, --image and --json, the store opened and the source checked. */
  function onImage<O extends object>(name: string, description: string, imageHelp: string, action: (store: ImageStore, o: ImageFlags & O) => Promise<void>,
    options: (c: Command) => Command = (c) => c): void {
    const c = img.command(name).description(description)
      .requiredOption(dataDir, dataDirHelp)
      .requiredOption('--source <id>', 'source id')
      .requiredOption('--image <id>', imageHelp);
    options(c).option('--json', 'print JSON')
      .action((o: ImageFlags & O) => run(async () => {
        const store = await openStore(o.dataDir);
        await knownSource(store, o.source);
        await action(store, o);
      }));
  }

  onImage('show', 'show one image: its disks, sizes and metadata', 'image id (see image ls)', async (store, o) => {
    const i = await store.getImage(o.source, o.image);
    printResult(o.json, i, (v) => [
      `source ${v.sourceId} image ${v.imageId} (cycle ${v.cycleId}, base ${v.baseImageId ?? 'none'}), committed ${v.committedAt}`,
      table(['DISK', 'KEY', 'LABEL', 'CAPACITY', 'ALLOCATED', 'CHUNKS'], v.disks.map((d) => [d.disk, (v.meta.diskKeys as number[] | undefined)?.[d.disk] ?? '-', d.label ?? '', `${formatBytes(d.capacity)} (${d.capacity})`, formatBytes(d.allocatedBytes), d.chunkCount])),
      ...((v.meta.excludedDiskKeys as number[] | undefined)?.length ? [`disks left out by the job's selection: ${(v.meta.excludedDiskKeys as number[]).join(', ')}`] : []),
      ...(Object.keys(v.meta).length ? [`meta: ${JSON.stringify(v.meta)}`] : []),
    ].join('\n'));
  });

  onImage('verify', 're-hash every chunk of an image; exits 3 when any chunk is missing or corrupt', 'image id', async (store, o) => {
    const r = await store.verify(o.source, o.image);
    printResult(o.json, { sourceId: o.source, imageId: o.image, ...r }, (v) => v.ok
      ? `image ${v.imageId} of ${v.sourceId}: ok (${v.chunks} chunks verified)`
      : [`image ${v.imageId} of ${v.sourceId}: BAD, ${v.bad.length} of ${v.chunks} chunks failed`,
        ...v.bad.slice(0, 20).map((b) => `  disk ${b.disk} offset ${b.offset}: ${b.reason}`)].join('\n'));
    if (!r.ok) {
      process.stderr.write('vmlift: error: the image failed verification\n  fix: sync a new image from the source (the damaged chunks are listed above)\n');
      process.exitCode = 3;
    }
  });

  onImage<{ disk: string; format: string; output: string }>('export', 'write one disk of an image to a file: sparse raw, or qcow2/vmdk through qemu-img', 'image id', async (store, o) => {
    if (!['raw', 'qcow2', 'vmdk'].includes(o.format)) throw new UserError('BAD_FORMAT', `unknown format "${o.format}"`, FIXES.BAD_FORMAT);
    const disk = intArg(o.disk, '--disk');
    const out = resolve(o.output);
    const t0 = Date.now();
    await store.export(o.source, o.image, disk, o.format as 'raw' | 'qcow2' | 'vmdk', out);
    const i = await store.getImage(o.source, o.image).catch(() => null);
    const d = i?.disks.find((x) => x.disk === disk);
    printResult(o.json, { sourceId: o.source, imageId: o.image, disk, format: o.format, output: out, capacity: d?.capacity ?? null, seconds: (Date.now() - t0) / 1000 },
      (v) => `exported disk ${v.disk} of image ${v.imageId} (${v.sourceId}) as ${v.format} to ${v.output}`);
  }, (c) => c
    .option('--disk <n>', 'disk number', '0')
    .option('--format <fmt>', 'raw, qcow2 or vmdk', 'raw')
    .requiredOption('--output <file>', 'output file (written as FILE.partial-* first, renamed when complete)'));

  onImage('inspect', "check an image's guest with libguestfs (OS, kernels, bootloader, filesystems, fstab, virtio in the initramfs, VMware Tools, cloud-init) and give a verdict per target; exits 4 when a target is blocked", 'image id', async (store, o) => {
    const { inspectImage } = await import('../../target/inspect.ts');
    const t0 = Date.now();
    const r = await inspectImage(store, o.source, o.image);
    printResult(o.json, { sourceId: o.source, imageId: o.image, ...r, seconds: (Date.now() - t0) / 1000 }, (v) => inspectText(v));
    if (Object.values(r.targets).some((t) => t.verdict === 'blocked')) process.exitCode = 4;
  });

  onImage<{ to: string; output: string; firstbootCommand?: string[] }>('convert', 'convert an image for KVM with virt-v2v-in-place into a new folder: disk-N.qcow2, domain.xml, qemu.sh, convert.json; the stored image is not changed; exits 4 when the guest cannot be converted (no OS, Windows without virtio-win)', 'image id', async (store, o) => {
    const { convertImage } = await import('../../target/convert.ts');
    const m = await convertImage(store, o.source, o.image, { to: o.to, output: o.output, firstbootCommands: o.firstbootCommand, onProgress: o.json ? undefined : (l) => process.stderr.write(`${l}\n`) })
      .catch((e: unknown) => {
        if (e instanceof CodedError && !(e instanceof StoreError) && !(e instanceof UserError)) throw new UserError(e.code, e.message, e.fix, { cause: e, exitCode: e.exitCode });
        throw e;
      });
    printResult(o.json, { ...m, output: resolve(o.output) }, (v) => [
      `converted image ${v.imageId} of ${v.sourceId} for KVM into ${v.output} in ${v.seconds.toFixed(1)} s (virt-v2v-in-place ${v.v2v.version}: ${v.v2v.seconds.toFixed(1)} s)`,
      `os: ${v.os.distro || v.os.type} ${v.os.version} ${v.os.arch}, hostname ${v.os.hostname || '-'}; ${v.cpus} CPUs, ${v.memoryMiB} MiB (${v.from === 'vcenter' ? 'from vCenter' : 'defaults: the image records no VM hardware'}), ${v.firmware}`,
      ...v.disks.map((d) => `  ${d.file}: virtio, ${formatBytes(d.sizeBytes)}`),
      `check: ${v.check.verdict}${v.check.reasons.length ? ` (${v.check.reasons.join(', ')})` : ''}`,
      `run it: ${join(v.output, 'qemu.sh')}, or virsh define ${join(v.output, 'domain.xml')}`,
    ].join('\n'));
  }, (c) => c
    .option('--to <target>', 'conversion target (kvm)', 'kvm')
    .requiredOption('--output <dir>', 'folder to create (built as DIR.tmp-* next to it, renamed when complete)')
    .option('--firstboot-command <cmd>', 'a command the converted guest runs once at its first boot (repeatable; virt-v2v --firstboot-command)', (v: string, prev: string[] = []) => [...prev, v]));

  onImage<{ converted?: string; timeout: string; reportDir?: string; accel: string; expect?: string }>('boot-test',
    'boot an image (or its --converted disks) in QEMU as the KVM target runs it, on throwaway overlays, and check it reaches a login prompt; exits 5 when it does not',
    'image id', async (store, o) => {
      const { bootTest } = await import('../../target/boot-test.ts');
      if (!['auto', 'kvm', 'tcg'].includes(o.accel)) throw new UserError('BAD_OPTION', `--accel "${o.accel}" is not auto, kvm or tcg`, 'give --accel auto, kvm or tcg');
      const timeoutSec = intArg(o.timeout, '--timeout');
      const reportDir = resolve(o.reportDir ?? join(tmpdir(), `vmlift-boot-test-${o.source}-${o.image}-${new Date().toISOString().replace(/[:.]/g, '-')}`));
      process.stderr.write(`boot-test: report folder ${reportDir}\n`);
      const r = await bootTest(store, { sourceId: o.source, imageId: o.image, converted: o.converted, timeoutSec, reportDir,
        accel: o.accel as 'auto' | 'kvm' | 'tcg', expect: o.expect, log: o.json ? undefined : (l) => process.stderr.write(`boot-test: ${l}\n`) });
      printResult(o.json, r, (v) => [
        v.passed ? `image ${v.imageId} of ${v.sourceId} boots: ${v.reached === 'login' ? `login prompt after ${v.secondsToLogin} s` : `multi-user target after ${v.secondsToMultiUser} s`} (${v.accel})`
          : `image ${v.imageId} of ${v.sourceId} did not boot (${v.accel}, ${v.seconds} s): ${v.failure!.message}`,
        'console (last lines):', ...v.consoleTail.map((l) => `  | ${l}`),
        `screenshot: ${v.screenshot ?? 'none'}; report: ${v.reportFile}; QEMU peak RSS ${v.qemuPeakRssMiB ?? '?'} MiB`,
      ].join('\n'));
      if (!r.passed) {
        process.stderr.write(`vmlift: error: ${r.failure!.code}: ${r.failure!.message}\n  fix: ${r.failure!.fix}\n`);
        process.exitCode = 5;
      }
    }, (c) => c
      .option('--converted <dir>', 'boot the disks of `vmlift image convert --output DIR` (never written) instead of the stored image')
      .option('--timeout <seconds>', 'give up when no login prompt appears within this time', '600')
      .option('--report-dir <dir>', 'folder for console.png and report.json (default: a new folder under TMPDIR, printed)')
      .option('--accel <accel>', 'auto (KVM when a probe shows it works, else TCG), kvm or tcg', 'auto')
      .option('--expect <text>', 'pass only when this text also appears on the serial console (e.g. printed by a convert --firstboot-command)'));

  onImage('rm', 'delete an image (refused while an export or verify uses it), then collect unreferenced chunks', 'image id', async (store, o) => {
    await store.removeImage(o.source, o.image);
    const gc = await store.gc();
    printResult(o.json, { sourceId: o.source, imageId: o.image, removed: true, ...gc },
      (v) => `removed image ${v.imageId} of ${v.sourceId}; freed ${v.removedChunks} chunks (${formatBytes(v.removedBytes)})` +
        (v.mergedPacks ? `; merged ${v.mergedPacks} small packs (${formatBytes(v.mergedBytes ?? 0)} copied)` : '') +
        (v.deferredChunks ? `; ${v.deferredChunks} chunks written in the last seconds are left to the next sweep` : ''));
  });
}

function inspectText(v: InspectReport & { sourceId: string; imageId: string; seconds: number }): string {
  const yes = (b: boolean | null) => (b === null ? 'unknown' : b ? 'yes' : 'no');
  const out = [`image ${v.imageId} of ${v.sourceId} (inspected in ${v.seconds.toFixed(1)} s)`];
  out.push(v.os ? `os: ${v.os.distro || v.os.type} ${v.os.version} (${v.os.product}), ${v.os.arch}, hostname ${v.os.hostname || '-'}, root ${v.os.root}` : 'os: none found');
  for (const k of v.kernels) {
    out.push(`kernel ${k.version}: initramfs ${k.initramfs ?? 'none'}; in the initramfs: ` +
      Object.entries(k.virtioInInitramfs).map(([m, b]) => `${m} ${yes(b)}`).join(', '));
  }
  if (v.bootloader) out.push(`bootloader: ${v.bootloader.type}${v.bootloader.config ? ` (${v.bootloader.config}${v.bootloader.rootParams.length ? `, root=${v.bootloader.rootParams.join(' ')}` : ''})` : ''}`);
  out.push(v.partitions.length ? table(['PARTITION', 'DISK', 'START', 'SIZE'], v.partitions.map((p) => [p.device, p.disk, p.start, formatBytes(p.size)]))
    : `partitions: none (${v.disks.map((d) => `${d.device}: ${d.partitionTable ?? 'no partition table'}`).join(', ')})`);
  if (v.filesystems.length) {
    out.push(table(['FILESYSTEM', 'TYPE', 'LABEL', 'MOUNT', 'SIZE', 'USED'], v.filesystems.map((f) => [f.device, f.type, f.label || '-', f.mountpoint ?? '-',
      f.sizeBytes === null ? '-' : formatBytes(f.sizeBytes), f.usedBytes === null ? '-' : formatBytes(f.usedBytes)])));
  }
  if (v.fstab.length) out.push(table(['FSTAB', 'MOUNT', 'TYPE', 'ON KVM'], v.fstab.map((e) => [e.spec, e.mountpoint, e.type, e.resolves.kvm ? 'resolves' : `does not resolve: ${e.note ?? ''}`])));
  if (v.os) out.push(`VMware Tools: ${yes(v.vmwareTools)}; cloud-init: ${yes(v.cloudInit)}`);
  for (const [target, t] of Object.entries(v.targets)) {
    out.push(`${target}: ${t.verdict}${t.verdict === 'blocked' ? `: ${t.reasons.filter((x) => x.severity === 'blocker').map((x) => x.message).join('; ')}` : ''}`);
    for (const x of t.reasons) out.push(`  - [${x.severity}] ${x.message}\n    fix: ${x.fix}`);
  }
  return out.join('\n');
}
