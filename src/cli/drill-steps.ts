/**
 * The drill steps of `receiver serve`: inspect, convert and boot-test from target/, given to the
 * receiver's DrillRunner (receiver/ does not know target/; cli/ wires the two). Loaded lazily, so
 * a receiver that never drills never loads libguestfs or QEMU code.
 */
import type { DrillSteps } from '../receiver/drills.ts';

export interface DrillStepOptions {
  /**
   * Memory of each step's guest in MiB: the libguestfs appliances of inspect and convert (virt-v2v's
   * included), and the boot's guest at most this (the VM's own memory when lower). Default: libguestfs'
   * own sizes (1280 MiB, virt-v2v 2560 MiB) and the VM's memory.
   */
  memoryMiB?: number | undefined;
}

export function targetDrillSteps(so: DrillStepOptions = {}): DrillSteps {
  const memoryMiB = so.memoryMiB;
  return {
    async inspect(store, sourceId, imageId, ctx) {
      const { inspectImage } = await import('../target/inspect.ts');
      const r = await inspectImage(store, sourceId, imageId, { signal: ctx.signal, memoryMiB });
      const kvm = r.targets.kvm;
      const main = kvm.reasons.filter((x) => x.severity !== 'warning');
      const os = r.os ? osName(r.os) : 'no operating system found';
      return { verdict: kvm.verdict, message: [os, ...main.map((x) => x.message)].join('; '), code: main[0]?.code, fix: main[0]?.fix };
    },
    async convert(store, sourceId, imageId, outputDir, ctx) {
      const { convertImage } = await import('../target/convert.ts');
      const m = await convertImage(store, sourceId, imageId, { to: 'kvm', output: outputDir, signal: ctx.signal, memoryMiB, onProgress: (line) => ctx.log.debug({ line }, 'convert') });
      return { message: `${m.v2v.tool} ${m.v2v.version} in ${m.v2v.seconds.toFixed(0)} s; ${m.cpus} CPUs, ${m.memoryMiB} MiB (${m.from}); check: ${m.check.verdict}` };
    },
    async boot(store, sourceId, imageId, o) {
      const { bootTest } = await import('../target/boot-test.ts');
      const r = await bootTest(store, {
        sourceId, imageId, converted: o.converted ?? undefined, timeoutSec: o.timeoutSeconds, reportDir: o.reportDir,
        log: (line) => o.log.debug({ line }, 'boot-test'), signal: o.signal, maxMemoryMiB: memoryMiB,
      });
      return {
        passed: r.passed, accel: r.accel, secondsToLogin: r.secondsToLogin, consoleTail: r.consoleTail, screenshot: r.screenshot,
        message: (r.passed ? `${r.reached === 'login' ? 'login prompt' : 'multi-user target'} reached in ${(r.secondsToLogin ?? r.secondsToMultiUser ?? r.seconds).toFixed(0)} s (${r.accel})`
          : r.failure?.message ?? 'the guest did not boot') + (r.memoryCappedFrom ? `; booted with ${r.memoryMiB} MiB (the VM has ${r.memoryCappedFrom} MiB; --drill-memory)` : ''),
        code: r.failure?.code, fix: r.failure?.fix,
      };
    },
  };
}

/** "debian 12.15", "Windows Server 2019 Standard": libguestfs gives Debian's product name as its bare version. */
function osName(os: { product: string; distro: string; version: string }): string {
  const base = os.product && os.product !== os.version ? os.product : os.distro;
  return (base.includes(os.version) ? base : `${base} ${os.version}`).trim();
}
