import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { printResult } from '../output.ts';
import { UserError } from '../../util/errors.ts';

// The lab vCenter lives in lab/ (a Go program and its TypeScript driver); the CLI only drives it.
const labModule = () => import('../../../lab/lab.ts');

function int(v: string, what: string): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new UserError('LAB_ARG', `${what} "${v}" is not a non-negative integer`, `give ${what} in bytes`);
  return n;
}

async function attach(dir: string) {
  const { connectLab } = await labModule();
  try {
    return await connectLab(dir);
  } catch (e) {
    throw new UserError('LAB_NOT_RUNNING', (e as Error).message, `start it with \`vmlift lab start --dir ${dir}\``);
  }
}

export function register(program: Command): void {
  const lab = program.command('lab').description('the lab vCenter (govmomi simulator + disks, CBT, snapshots) for tests and demos');

  lab.command('start').description('start a lab vCenter in the background and print how to connect')
    .requiredOption('--dir <dir>', 'lab directory (state, certificate, password, datastore)')
    .option('--vms <n>', 'plain VMs besides the seven shaped ones', '8')
    .option('--disk-mb <n>', 'capacity of each first disk in MiB', '64')
    .option('--esx', 'be a standalone ESXi host (HostAgent, ha-datacenter, user root) instead of a vCenter')
    .option('--page-size <n>', 'RetrievePropertiesEx page size without maxObjects (0: no paging)', '100')
    .option('--dc-folder', 'put the datacenter in a folder (inventory path F0/DC0)')
    .option('--folders', 'add VMs in nested VM folders (Prod/Web, Prod/Db, Test) and one in a vApp (Prod/shop)')
    .option('--guest', 'add VM guest-debian holding a real bootable Debian guest (built once and cached: lab/guest/build.sh)')
    .option('--json', 'print JSON')
    .action(async (o) => {
      const { startLab, connectLab } = await labModule();
      const running = await connectLab(o.dir).catch(() => undefined);
      if (running) throw new UserError('LAB_RUNNING', `a lab already runs in ${o.dir} (pid ${running.pid})`, `stop it with \`vmlift lab stop --dir ${o.dir}\``);
      const l = await startLab({ dir: o.dir, vms: int(o.vms, '--vms'), diskMb: int(o.diskMb, '--disk-mb'), detached: true, esx: !!o.esx,
        pageSize: int(o.pageSize, '--page-size'), dcFolder: !!o.dcFolder, folders: !!o.folders, guest: !!o.guest });
      const info = { url: l.url, user: l.user, passwordFile: l.passwordFile, thumbprint: l.thumbprintSha256, thumbprintSha1: l.thumbprintSha1,
        pid: l.pid, datacenter: l.datacenter, datacenterPath: l.datacenterPath, datastore: l.datastore, vms: l.vms.length, apiType: l.apiType };
      printResult(o.json, info, (x) => [`lab ${x.apiType === 'HostAgent' ? 'ESXi host' : 'vCenter'} running (pid ${x.pid}, ${x.vms} VMs)`, `  --server ${x.url}`, `  --user ${x.user}`,
        `  --password-file ${x.passwordFile}`, `  --thumbprint ${x.thumbprint}`, `  (SHA-1 ${x.thumbprintSha1})`].join('\n'));
    });

  lab.command('stop').description('stop the lab vCenter').requiredOption('--dir <dir>').option('--json')
    .action(async (o) => {
      const l = await attach(o.dir);
      await l.stop();
      printResult(o.json, { stopped: true, pid: l.pid }, () => `lab ${l.apiType === 'HostAgent' ? 'ESXi host' : 'vCenter'} stopped (pid ${l.pid})`);
    });

  lab.command('write').description('play a guest write onto a VM disk (goes past snapshots)')
    .requiredOption('--dir <dir>').argument('<vm>')
    .requiredOption('--disk <key>', 'disk device key').requiredOption('--offset <n>').requiredOption('--length <n>')
    .option('--data-file <file>', 'bytes to write (its first LENGTH bytes)')
    .option('--random', 'write random bytes (the default without --data-file)')
    .option('--json')
    .action(async (vm: string, o) => {
      const l = await attach(o.dir);
      const length = int(o.length, '--length');
      const offset = int(o.offset, '--offset');
      if (o.dataFile && o.random) throw new UserError('LAB_ARG', '--data-file and --random exclude each other', 'keep one of them');
      let data = randomBytes(length);
      if (o.dataFile) {
        const f = await readFile(o.dataFile);
        if (f.length < length) throw new UserError('LAB_ARG', `${o.dataFile} holds ${f.length} bytes, fewer than --length ${length}`, 'give a larger file or a smaller --length');
        data = f.subarray(0, length);
      }
      try {
        await l.write(vm, int(o.disk, '--disk'), offset, data);
      } catch (e) {
        throw new UserError('LAB_WRITE', (e as Error).message.replace(/^lab write: 400 /, ''), 'check the VM name, the disk key (vmlift vc show VM) and that offset+length fits the disk');
      }
      printResult(o.json, { vm, disk: Number(o.disk), offset, length }, (x) => `wrote ${x.length} bytes at ${x.offset} of ${x.vm} disk ${x.disk}`);
    });

  lab.command('guest-write').description("write a file into a VM guest's filesystem, as the running guest would (CBT sees the blocks)")
    .requiredOption('--dir <dir>').argument('<vm>')
    .requiredOption('--path <path>', 'absolute path in the guest').option('--content <text>', 'the file content')
    .option('--content-file <file>', 'take the content from this file').option('--disk <key>', 'disk device key (default: the first disk)')
    .option('--json')
    .action(async (vm: string, o) => {
      const l = await attach(o.dir);
      if ((o.content === undefined) === (o.contentFile === undefined)) throw new UserError('LAB_ARG', 'give exactly one of --content and --content-file', 'add --content TEXT or --content-file FILE');
      const content = o.contentFile ? await readFile(o.contentFile) : Buffer.from(o.content as string);
      try {
        await l.guestWrite(vm, o.path, content, o.disk === undefined ? undefined : int(o.disk, '--disk'));
      } catch (e) {
        throw new UserError('LAB_GUEST_WRITE', (e as Error).message, 'check the VM name (a VM with a guest OS: guest-debian under `lab start --guest`), that --path is absolute, and that libguestfs-tools is installed');
      }
      printResult(o.json, { vm, path: o.path, bytes: content.length }, (x) => `wrote ${x.bytes} bytes to ${x.path} in ${x.vm}`);
    });

  lab.command('fault').description('make the next task(s) of a kind fail (createSnapshot, removeSnapshot, reconfigure), or needConsolidation')
    .requiredOption('--dir <dir>').argument('<kind>').option('--count <n>', 'how many', '1')
    .action(async (kind: string, o) => { const l = await attach(o.dir); await l.injectFault(kind, int(o.count, '--count')); });

  lab.command('expire-sessions').description('end every vCenter session (clients must log in again)')
    .requiredOption('--dir <dir>')
    .action(async (o) => { const l = await attach(o.dir); process.stdout.write(`expired ${await l.expireSessions()} session(s)\n`); });

  lab.command('restart-vcenter').description('act as a restarting vCenter: end every session, answer /sdk and /folder with 503 for a while')
    .requiredOption('--dir <dir>').option('--seconds <n>', 'how long it answers 503 (0: end it now)', '30')
    .action(async (o) => {
      const l = await attach(o.dir);
      process.stdout.write(`expired ${await l.restartVcenter(int(o.seconds, '--seconds') * 1000)} session(s); 503 for ${o.seconds} s\n`);
    });
}
