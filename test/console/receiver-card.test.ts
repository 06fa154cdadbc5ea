/**
 * Issue 15, the overview's receiver card in a real browser (Debian's chromium, headless): the
 * connector API (in this process, serving the built page) asks a real receiver over TLS, whose data
 * folder is a tmpfs of 64 MiB, and one receiver that does not answer. The card shows the free space
 * as a bar and as text equal to statfs of the data folder, the dedup ratio of two images of the same
 * data ("2.0 ×"), and "Unreachable" with RECEIVER_UNREACHABLE and its fix; in Japanese too.
 * A screenshot goes to test-artifacts/console/overview-receivers.png (git-ignored).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';
import { ConnectorApi } from '../../src/engine/api.ts';
import { JobEngine } from '../../src/engine/jobs.ts';
import { Workgroups } from '../../src/engine/workgroups.ts';
import { EngineMetrics } from '../../src/engine/metrics.ts';
import { openStateStore } from '../../src/state/sqlite.ts';
import { silentLogger } from '../../src/util/log.ts';
import { askReceivers } from '../../src/engine/receiver-figures.ts';
import { startReceiver } from '../../src/receiver/server.ts';
import { Sender } from '../../src/transfer/sender.ts';
import { PROJECT_ROOT } from '../../src/util/root.ts';
import { freePort, sendDisk } from '../transfer/helpers.ts';
import { canMount, smallFs } from '../util/small-fs.ts';

const CHROMIUM = '/usr/bin/chromium';
const TOKEN = 'tkn-card-0123456789abcdefghijklm';
const MiB = 1 << 20;
const artifacts = join(PROJECT_ROOT, 'test-artifacts', 'console');

test('the overview shows each receiver\'s free space (bar and text), dedup ratio, and an unreachable one with its fix', { skip: canMount() ? false : 'needs root to mount a tmpfs', timeout: 120_000 }, async (t) => {
  assert.ok(existsSync(CHROMIUM), `no ${CHROMIUM}; fix: run scripts/setup.sh (it installs Debian's chromium)`);
  assert.ok(existsSync(join(PROJECT_ROOT, 'dist', 'console', 'index.html')), 'the console is not built; fix: run scripts/build.sh');
  mkdirSync(artifacts, { recursive: true });
  const fs = smallFs(t, 64);
  const dataDir = join(fs.dir, 'rx');
  const rx = await startReceiver({ dataDir, controlPort: 0, dataPort: 0, listen: '127.0.0.1' });
  const code = rx.createdCode!.code;
  const home = mkdtempSync(join(tmpdir(), 'vmlift-card-'));
  const state = openStateStore(join(home, 'state.db'));
  const engine = new JobEngine({ state, connect: () => Promise.reject(new Error('no cycles in this test')), logger: silentLogger });
  const live = `127.0.0.1:${rx.controlPort}`;
  const dead = `127.0.0.1:${await freePort()}`;
  const credentialsDir = join(home, 'credentials');
  const api = new ConnectorApi({ engine, workgroups: new Workgroups(engine), metrics: new EngineMetrics(state), logger: silentLogger, token: TOKEN,
    resolveVm: async (n) => ({ vmRef: `vm-${n}`, name: n }),
    receivers: () => askReceivers([
      { address: live, fingerprint: rx.fingerprint, credentialsDir, activationCode: code },
      { address: dead, fingerprint: rx.fingerprint, credentialsDir, activationCode: code },
    ]) });
  const { port } = await api.listen(0);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
  t.after(async () => {
    await browser.close().catch(() => undefined);
    await api.close(); state.close(); await rx.close();
    rmSync(home, { recursive: true, force: true });
  });

  const data = randomBytes(6 * MiB);
  for (const src of ['card-a', 'card-b']) {
    const s = await Sender.connect({ receiver: live, fingerprint: rx.fingerprint, credentialFile: join(home, `${src}.cred`), activationCode: code, sourceId: src, compression: 3, bandwidthMbps: 0, checksum: true });
    const c = await s.beginCycle({ cycleId: 'c1', disks: [{ disk: 0, capacity: data.length }] });
    await sendDisk(c, 0, data);
    await c.commit();
    await s.close();
  }

  const page = await (await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 900 } })).newPage();
  page.setDefaultTimeout(30_000);
  await page.goto(`http://127.0.0.1:${port}/console/`);
  await page.getByLabel('API token').fill(TOKEN);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
  const card = page.locator('[data-testid="receivers"]');
  const ok = card.locator(`[data-receiver="${live}"]`);
  await ok.locator('[data-testid="free"]').waitFor();

  // nothing writes to the tmpfs now: the text is statfs of the data folder, as the page formats it
  const st = statfsSync(dataDir);
  const free = st.bavail * st.bsize, total = st.blocks * st.bsize;
  const pct = Math.floor((free * 100) / total);
  assert.equal(await ok.locator('[data-testid="free"]').textContent(), `${(free / MiB).toFixed(1)} MiB free of 64.0 MiB (${pct} % free)`);
  const bar = ok.getByRole('meter', { name: `Free space on the receiver ${live}` });
  assert.equal(await bar.getAttribute('aria-valuenow'), String(pct), 'the bar says its value, not colour alone');
  assert.equal(await ok.locator('[data-testid="dedup"]').textContent(), 'Dedup ratio 2.0 ×');
  assert.equal(await ok.locator('[data-testid="stored"]').textContent(), '12.0 MiB in 2 images, stored in 6.0 MiB');

  const bad = card.locator(`[data-receiver="${dead}"]`);
  const alert = bad.getByRole('alert');
  assert.match(await alert.textContent() ?? '', /Unreachable \(RECEIVER_UNREACHABLE\):.*Fix:.*vmlift receiver serve/s);
  await page.screenshot({ path: join(artifacts, 'overview-receivers.png'), fullPage: true });

  await page.getByLabel('Language').selectOption('ja');
  await card.getByText('重複排除率 2.0 ×').waitFor();
  await bad.getByText(/到達できません/).waitFor();
});
