/**
 * The drill steps of `receiver serve`: inspect, convert and boot-test from target/, given to the
 * receiver's DrillRunner (receiver/ does not know target/; cli/ wires the two). Loaded lazily, so
 * a receiver that never drills never loads libguestfs or QEMU code.
 */
import type { DrillSteps } from '../receiver/drills.ts';

export function targetDrillSteps(): DrillSteps {
  return {
    async inspect(store, sourceId, imageId) {
      const { inspectImage } = await import('../target/inspect.ts');
      const r = await inspectImage(store, sourceId, imageId);
      const kvm = r.targets.kvm;
      const main = kvm.reasons.filter((x) => x.severity !== 'warning');
      const os = r.os ? `${r.os.product || r.os.distro} ${r.os.version}`.trim() : 'no operating system found';
      return { verdict: kvm.verdict, message: [os, ...main.map((x) => x.message)].join('; '), code: main[0]?.code, fix: main[0]?.fix };
    },
    async convert(store, sourceId, imageId, outputDir, ctx) {
      const { convertImage } = await import('../target/convert.ts');
      const m = await convertImage(store, sourceId, imageId, { to: 'kvm', output: outputDir, onProgress: (line) => ctx.log.debug({ line }, 'convert') });
      return { message: `${m.v2v.tool} ${m.v2v.version} in ${m.v2v.seconds.toFixed(0)} s; ${m.cpus} CPUs, ${m.memoryMiB} MiB (${m.from}); check: ${m.check.verdict}` };
    },
    async boot(store, sourceId, imageId, o) {
      const { bootTest } = await import('../target/boot-test.ts');
      const r = await bootTest(store, {
        sourceId, imageId, converted: o.converted ?? undefined, timeoutSec: o.timeoutSeconds, reportDir: o.reportDir,
        log: (line) => o.log.debug({ line }, 'boot-test'),
      });
      return {
        passed: r.passed, accel: r.accel, secondsToLogin: r.secondsToLogin, consoleTail: r.consoleTail, screenshot: r.screenshot,
        message: r.passed ? `${r.reached === 'login' ? 'login prompt' : 'multi-user target'} reached in ${(r.secondsToLogin ?? r.secondsToMultiUser ?? r.seconds).toFixed(0)} s (${r.accel})`
          : r.failure?.message ?? 'the guest did not boot',
        code: r.failure?.code, fix: r.failure?.fix,
      };
    },
  };
}
