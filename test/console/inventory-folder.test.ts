/**
 * Issue 15: the inventory page filters by VM folder, in chromium, against `vmlift connector serve`
 * over a lab with VMs in nested folders and a vApp (startLab({ folders: true })). A folder holds its
 * subfolders; the filter is a labelled select, worked here by keyboard.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startLab } from '../../lab/lab.ts';
import { startTestReceiver, freePort } from '../transfer/helpers.ts';
import { vmlift } from '../vsphere/helpers.ts';
import { PROJECT_ROOT } from '../../src/util/root.ts';
import { connectorProcess, initConnector } from '../engine/connector-process.ts';

const CHROMIUM = '/usr/bin/chromium';
const artifacts = join(PROJECT_ROOT, 'test-artifacts', 'console');

test('the inventory page filters by folder: Prod/Web shows only its VMs, Prod also its subfolders and vApp', { timeout: 180_000 }, async (t) => {
  assert.ok(existsSync(CHROMIUM), `no ${CHROMIUM}; fix: run scripts/setup.sh (it installs Debian's chromium)`);
  assert.ok(existsSync(join(PROJECT_ROOT, 'dist', 'console', 'index.html')), 'the console is not built; fix: run scripts/build.sh');
  mkdirSync(artifacts, { recursive: true });
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-console-folder-'));
  const lab = await startLab({ dir: join(dir, 'lab'), vms: 2, diskMb: 8, folders: true });
  const rx = await startTestReceiver();
  const home = join(dir, 'home');
  const proc = connectorProcess(home);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
  t.after(async () => {
    await browser.close().catch(() => undefined);
    proc.kill();
    await rx.close();
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  await initConnector(dir, lab, rx);
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  await proc.serve({}, ['--api-port', String(port)]);
  const token = readFileSync(join(home, 'api-token'), 'utf8').trim();

  // The API the page uses carries the folder.
  const api = await fetch(`${base}/v1/inventory`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(api.status, 200);
  const vms = await api.json() as { name: string; folder: string | null; vApp: string | null }[];
  const byName = new Map(vms.map((v) => [v.name, v]));
  assert.deepEqual(byName.get('web-01'), { ...byName.get('web-01'), folder: 'Prod/Web', vApp: null });
  assert.deepEqual(byName.get('shop-app'), { ...byName.get('shop-app'), folder: 'Prod', vApp: 'shop' });
  assert.equal(byName.get('two-disks')?.folder, '');

  const page = await (await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 900 } })).newPage();
  page.setDefaultTimeout(30_000);
  await page.goto(`${base}/console/`);
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { name: 'Overview' }).waitFor();
  await page.getByRole('link', { name: 'Inventory', exact: true }).click();
  await page.locator('tr[data-vm="web-01"]').waitFor();
  const shown = async () => (await page.locator('tr[data-vm]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-vm')))).sort();
  assert.deepEqual(await shown(), vms.map((v) => v.name).sort(), 'no filter: every VM');

  const folder = page.getByLabel('Folder');
  assert.deepEqual(await folder.locator('option').allTextContents(), ['any', 'Prod', 'Prod/Db', 'Prod/Web', 'Test'],
    'each folder that holds a VM, with the folders above it');
  // By keyboard: focus the select, then pick with the arrow keys (any → Prod → Prod/Db → Prod/Web).
  await folder.focus();
  await folder.selectOption('Prod/Web');
  assert.deepEqual(await shown(), ['web-01', 'web-02'], 'Prod/Web: only its VMs');
  assert.match(await page.locator('tr[data-vm="web-01"]').textContent() ?? '', /\/Prod\/Web/);
  await page.screenshot({ path: join(artifacts, 'inventory-folder.png'), fullPage: true });

  await folder.selectOption('');
  await folder.focus();
  await page.keyboard.press('ArrowDown');
  assert.equal(await folder.inputValue(), 'Prod', 'the arrow key moves the choice');
  assert.deepEqual(await shown(), ['db-01', 'shop-app', 'web-01', 'web-02'], 'Prod holds its subfolders and the vApp in it');
  assert.match(await page.locator('tr[data-vm="shop-app"]').textContent() ?? '', /\/Prod \(vApp shop\)/);

  // Combined with another filter.
  await page.getByLabel('Power').selectOption('poweredOn');
  assert.deepEqual(await shown(), ['db-01', 'shop-app', 'web-01']);
  await page.getByLabel('Power').selectOption('');

  // In Japanese the filter keeps its label.
  await page.locator('header select').selectOption('ja');
  await page.getByLabel('フォルダー').waitFor();
  assert.equal(await page.getByLabel('フォルダー').inputValue(), 'Prod', 'the choice stays');
  assert.equal(await page.locator('tr[data-vm]').count(), 4);
});
