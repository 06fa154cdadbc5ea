/** The vSphere client against hand-written fixtures of what real vCenters send (fixtures/vsphere/), without a lab. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VCenter } from '../../src/vsphere/index.ts';
import { startReplay, type ReplayOptions } from './replay-server.ts';

async function replayed(o: ReplayOptions) {
  const r = await startReplay(o);
  const vc = await VCenter.connect({ server: r.url, user: 'vmlift', password: 'secret', trust: { thumbprint: r.thumbprint }, timeoutMs: 10_000 })
    .catch(async (e) => { await r.close(); throw e; });
  return { r, vc, done: async () => { await vc.close(); await r.close(); } };
}

const MiB = 1024 * 1024;

test('CBT off in the vSphere 7.0U3 form (InvalidArgument on startOffset) is VC_CBT_OFF with its fix', async () => {
  const { vc, done } = await replayed({ answers: { QueryChangedDiskAreas: 'fault-cbt-off-7.0u3.xml' } });
  try {
    await assert.rejects(vc.changedAreas('vm-42', 'snapshot-3', 2000, '*', 64 * MiB), (e: Error & { code?: string; fix?: string }) =>
      e.code === 'VC_CBT_OFF' && /change tracking is not active/.test(e.message) && /vmlift vc cbt enable/.test(e.fix ?? ''));
  } finally { await done(); }
});

test('NotFound on the snapshot says the snapshot is gone and to run the cycle again', async () => {
  const { vc, done } = await replayed({ answers: { QueryChangedDiskAreas: 'fault-snapshot-not-found.xml' } });
  try {
    await assert.rejects(vc.changedAreas('vm-42', 'snapshot-3', 2000, '*', 64 * MiB), (e: Error & { code?: string; fix?: string }) =>
      e.code === 'VC_SNAPSHOT_GONE' && /snapshot snapshot-3 no longer exists/.test(e.message) && /run the cycle again/.test(e.fix ?? ''));
  } finally { await done(); }
});
