/**
 * Issue 15: the web console in a real browser (Debian's chromium, headless, driven by playwright-core)
 * against `vmlift connector serve` with the lab vCenter and a local receiver. One rig, the flows in
 * order: a request without a session is refused; log in (token and one-time link); a two-disk VM from
 * the inventory becomes a job from a template; the bandwidth changed while the cycle runs and the
 * speed follows; the progress reaches 100 % and the first image appears; a snapshot failure shows its
 * error and fix, and retry clears it; a workgroup of three where one member cannot sync, said by the
 * confirm step; a job completed; Japanese labels; the page reconnects after a connector restart.
 * Screenshots go to test-artifacts/console/ (git-ignored).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium, type Page } from 'playwright-core';
import { startLab } from '../../lab/lab.ts';
import { startTestReceiver, freePort } from '../transfer/helpers.ts';
import { guestWrites, MiB } from '../engine/harness.ts';
import { vmlift } from '../vsphere/helpers.ts';
import { PROJECT_ROOT } from '../../src/util/root.ts';
import { connectorProcess, initConnector } from '../engine/connector-process.ts';

const CHROMIUM = '/usr/bin/chromium';
const artifacts = join(PROJECT_ROOT, 'test-artifacts', 'console');

/** "1.9 MiB/s" → bytes per second. */
function parseRate(text: string): number {
  const m = /([\d.]+)\s*(B|KiB|MiB|GiB)\/s/.exec(text);
  if (!m) return NaN;
  return Number(m[1]) * { B: 1, KiB: 1024, MiB: 1 << 20, GiB: 1 << 30 }[m[2] as 'B'];
}

test('the web console in chromium: login, inventory → job, live speed, image, error and retry, workgroup confirm, complete, Japanese, reconnect', { timeout: 240_000 }, async (t) => {
  assert.ok(existsSync(CHROMIUM), `no ${CHROMIUM}; fix: run scripts/setup.sh (it installs Debian's chromium)`);
  assert.ok(existsSync(join(PROJECT_ROOT, 'dist', 'console', 'index.html')), 'the console is not built; fix: run scripts/setup.sh (scripts/build.sh builds dist/console)');
  mkdirSync(artifacts, { recursive: true });
  const dir = mkdtempSync(join(tmpdir(), 'vmlift-console-'));
  const lab = await startLab({ dir: join(dir, 'lab'), vms: 3, diskMb: 64 });
  const rx = await startTestReceiver();
  const home = join(dir, 'home');
  await initConnector(dir, lab, rx);
  // A small send window, so what the disks have read follows the wire; short retries, so a persistent fault shows soon.
  const config = JSON.parse(readFileSync(join(home, 'config.json'), 'utf8'));
  writeFileSync(join(home, 'config.json'), JSON.stringify({ ...config, receiver: { ...config.receiver, windowMib: 2 }, retry: { attempts: 2, baseDelayMs: 200, maxDelayMs: 400 } }));

  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const proc = connectorProcess(home);
  const serve = (): Promise<ChildProcess> => proc.serve({}, ['--api-port', String(port)]);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
  t.after(async () => {
    await browser.close().catch(() => undefined);
    proc.kill();
    await rx.close();
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  let connector = await serve();
  const token = readFileSync(join(home, 'api-token'), 'utf8').trim();
  const cli = async <T>(args: string[]): Promise<T> => {
    const r = await vmlift([...args, '--home', home, '--json']);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  };
  await cli(['template', 'create', 'slow', '--interval', '1d', '--compression', '0', '--bandwidth', '8', '--max-images', '3']);

  const context = await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(30_000);
  const shot = (name: string, p: Page = page) => p.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
  const state = (job: string) => page.locator(`tr[data-job="${job}"] [data-state]`).getAttribute('data-state');

  await t.test('a request without a session or token is refused', async () => {
    const r = await page.goto(`${base}/v1/jobs`);
    assert.equal(r?.status(), 401);
    assert.match(await page.textContent('body') ?? '', /UNAUTHORIZED/);
    for (const path of ['/v1/events', '/v1/workgroups', '/v1/inventory']) assert.equal((await fetch(`${base}${path}`)).status, 401, path);
    const put = await fetch(`${base}/v1/templates/x`, { method: 'PUT', body: '{}' });
    assert.equal(put.status, 401);
  });

  await t.test('log in with the token; a one-time link from `connector console-url` logs in once', async (st) => {
    await page.goto(`${base}/console/`);
    await page.getByLabel('API token').waitFor();
    const nav = JSON.parse(await page.evaluate('JSON.stringify(performance.getEntriesByType("navigation")[0])') as string) as { duration: number };
    const res = JSON.parse(await page.evaluate('JSON.stringify(performance.getEntriesByType("resource"))') as string) as { transferSize: number }[];
    st.diagnostic(`page load ${nav.duration.toFixed(0)} ms, ${res.length + 1} files, ${((res.reduce((n, r) => n + r.transferSize, 0)) / 1024).toFixed(1)} KiB of assets transferred`);
    await page.getByLabel('API token').fill('not-the-token');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('alert').filter({ hasText: 'wrong API token' }).waitFor();
    // By keyboard: the field has focus after a click on its label, Enter submits.
    await page.getByText('API token', { exact: true }).click();
    await page.keyboard.press('Control+A');
    await page.keyboard.type(token);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    await page.locator('[data-conn="live"]').waitFor();
    const cookies = await context.cookies();
    const c = cookies.find((x) => x.name === 'vmlift_session');
    assert.ok(c && c.httpOnly && c.sameSite === 'Strict', JSON.stringify(cookies));
    assert.equal(await page.evaluate('document.cookie'), '', 'the session cookie is not readable by scripts');
    // the overview's receiver card, through connector serve's wiring (its own source, over TLS): no image yet, ratio 1
    await page.locator(`[data-receiver="127.0.0.1:${rx.rx.controlPort}"][data-reachable="true"] [data-testid="dedup"]`).filter({ hasText: 'Dedup ratio 1.0 ×' }).waitFor();

    const link = await cli<{ url: string }>(['connector', 'console-url']);
    const other = await browser.newContext();
    const p2 = await other.newPage();
    await p2.goto(link.url);
    await p2.getByRole('heading', { name: 'Overview' }).waitFor();
    assert.ok(!p2.url().includes('link='), 'the code is taken off the address bar');
    const p3 = await (await browser.newContext()).newPage();
    await p3.goto(link.url);
    await p3.getByLabel('API token').waitFor();
    await other.close();
    await p3.context().close();
  });

  const vm = lab.vm('two-disks');
  // ~60 MiB of data for the first cycle: at the template's 8 Mbps (1 MB/s) it would take a minute, and
  // after the change to 64 Mbps it still runs several seconds, long enough to read the new speed on a loaded machine.
  await guestWrites(lab, vm.name, vm.disks[0]!.key, vm.disks[0]!.capacity, 640);
  await guestWrites(lab, vm.name, vm.disks[1]!.key, vm.disks[1]!.capacity, 400);

  await t.test('inventory: search and filter, pick the two-disk VM, create a job from a template and start it', async () => {
    await page.getByRole('link', { name: 'Inventory', exact: true }).click();
    await page.locator('tr[data-vm="two-disks"]').waitFor();
    assert.ok(await page.locator('tr[data-vm="shape-snapshot"]').count() === 1);
    await page.getByLabel('Search by name').fill('two');
    await page.getByLabel('Power').selectOption('poweredOn');
    assert.equal(await page.locator('tr[data-vm]').count(), 1);
    const row = page.locator('tr[data-vm="two-disks"]');
    assert.match(await row.textContent() ?? '', /2 · 96\.0 MiB/);
    await page.getByLabel('Search by name').fill('');
    await page.getByLabel('Power').selectOption('');
    // A VM with a user snapshot shows its preflight refusal inline.
    assert.match(await page.locator('tr[data-vm="shape-snapshot"]').textContent() ?? '', /⚠/);
    await shot('inventory');
    await page.getByLabel('Select two-disks').check();
    await page.getByLabel('From template').selectOption('slow');
    await page.getByRole('button', { name: 'Create jobs' }).click();
    await page.getByRole('status').filter({ hasText: 'Created: two-disks' }).waitFor();
    const job = await cli<{ job: { settings: { bandwidthMbps: number; compression: number; intervalSeconds: number } } }>(['job', 'show', 'two-disks']);
    assert.deepEqual([job.job.settings.bandwidthMbps, job.job.settings.compression, job.job.settings.intervalSeconds], [8, 0, 86400], 'the template\'s settings');
  });

  await t.test('job page: the speed follows a bandwidth change during the cycle; progress reaches 100 % and the first image appears', async () => {
    await page.goto(`${base}/console/#/jobs/two-disks`);
    // Remember whether any disk's bar ever showed 100 % (the live status lasts through commit and cleanup).
    await page.evaluate(`setInterval(() => { if ([...document.querySelectorAll('[role=progressbar]')].some((e) => e.getAttribute('aria-valuenow') === '100')) window.__saw100 = true; }, 50)`);
    const speed = page.getByTestId('job-speed');
    await speed.waitFor({ timeout: 30_000 });
    // Past the send window's first burst (2 MiB read at once), then a whole throughput window (3 s).
    for (let i = 0; i < 120; i++) {
      const v = await cli<{ live: { disks: { done: number }[] } | null }>(['job', 'show', 'two-disks']);
      if ((v.live?.disks ?? []).reduce((n, d) => n + d.done, 0) > 4 * MiB) break;
      await sleep(250);
    }
    await sleep(3500);
    const slow = parseRate(await speed.textContent() ?? '');
    assert.ok(slow > 0.5e6 && slow < 1.6e6, `at 8 Mbps the page shows about 1 MB/s (${slow} B/s)`);
    await shot('job-slow');
    await page.getByLabel('Bandwidth limit (Mbps, 0 = none)').fill('64');
    await page.getByRole('button', { name: 'Apply' }).click();
    // the fastest reading while the cycle lasts (once it ends, the live panel and its speed go away)
    let fast = 0;
    for (let i = 0; i < 100 && fast < 3 * slow; i++) {
      await sleep(100);
      const v = parseRate(await speed.textContent({ timeout: 1000 }).catch(() => '') ?? '');
      if (v > fast) fast = v;
    }
    assert.ok(fast >= 3 * slow, `after 64 Mbps the speed rose (${slow} → ${fast} B/s)`);
    // (The page's CSP forbids eval, so the test polls through the DevTools protocol rather than waitForFunction.)
    for (let i = 0; i < 240 && await page.evaluate('window.__saw100 === true') !== true; i++) await sleep(250);
    assert.equal(await page.evaluate('window.__saw100 === true'), true, 'a disk\'s progress bar reached 100 %');
    await page.locator('ul.images li').first().waitFor({ timeout: 60_000 });
    await page.locator('tr[data-cycle="committed"]').first().waitFor();
    await page.locator('figure.chart canvas').waitFor();
    assert.match(await page.locator('ul.images').textContent() ?? '', /vmlift image export --source two-disks --image \S+ --disk 0/);
    assert.match(await page.locator('table').first().textContent() ?? '', /http/, 'disks with their transport');
    // One full cycle measures no change rate: the forecast says what it still needs (job show's own reason).
    await page.locator('[data-forecast]').filter({ hasText: /no forecast yet: \S/ }).waitFor();
    await shot('job');
  });

  await t.test('a snapshot failure shows the error with its fix; retry clears it', async () => {
    await page.locator('h1 [data-state="waiting"]').waitFor({ timeout: 90_000 });
    await lab.injectFault('createSnapshot', 2);
    await page.getByRole('button', { name: 'Sync now' }).click();
    const err = page.locator('.job-error [role=alert]');
    await err.waitFor({ timeout: 60_000 });
    const text = await err.textContent() ?? '';
    assert.match(text, /VC_TASK_FAILED/);
    assert.match(text, /injected by the lab/);
    assert.match(text, /Fix:.*Monitor → Tasks/);
    await page.locator('h1 [data-state="error"]').waitFor();
    await shot('job-error');
    await page.getByRole('link', { name: 'Overview', exact: true }).click();
    assert.match(await page.locator('ul.errors').textContent() ?? '', /two-disks.*injected by the lab/);
    await shot('overview-error');
    await page.goto(`${base}/console/#/jobs/two-disks`);
    await page.getByRole('button', { name: 'Retry' }).click();
    await page.locator('h1 [data-state="waiting"]').waitFor({ timeout: 60_000 });
    assert.equal(await page.locator('.job-error').count(), 0);
    await page.locator('tr[data-cycle="committed"]').nth(1).waitFor();
    assert.equal(await page.locator('tr[data-cycle="failed"]').count(), 1, 'the failed cycle stays in the history');
  });

  await t.test('workgroup of three: batch sync, the confirm step names the member that cannot sync and why', async () => {
    await page.getByRole('link', { name: 'Inventory', exact: true }).click();
    await page.getByLabel('Select vm-0001').check();
    await page.getByRole('button', { name: 'Create jobs' }).click();
    await page.getByRole('status').filter({ hasText: 'Created: vm-0001' }).waitFor();
    await page.getByLabel('Select vm-0002').check();
    await page.getByLabel('Start them now').uncheck();
    await page.getByRole('button', { name: 'Create jobs' }).click();
    await page.getByRole('status').filter({ hasText: 'Created: vm-0002' }).waitFor();

    // A selection can also become a new workgroup straight from the inventory.
    await page.getByLabel('Select vm-0003').check();
    await page.getByLabel('or a new workgroup').fill('wave-2');
    await page.getByRole('button', { name: 'Create jobs' }).click();
    await page.getByRole('status').filter({ hasText: 'Created: vm-0003' }).waitFor();
    assert.deepEqual((await cli<{ workgroup: { members: string[] } }>(['workgroup', 'show', 'wave-2'])).workgroup.members, ['vm-0003']);

    await page.getByRole('link', { name: 'Workgroups', exact: true }).click();
    await page.getByLabel('Workgroup id').fill('wave-1');
    await page.getByRole('button', { name: 'Create', exact: true }).click();
    const card = page.locator('article[data-workgroup="wave-1"]');
    for (const j of ['two-disks', 'vm-0001', 'vm-0002']) await card.getByLabel(j).check();
    await card.getByRole('button', { name: 'Add jobs' }).click();
    await card.locator('tr[data-member]').nth(2).waitFor();
    // vm-0001's first cycle is short: wait for it so that two members can sync and one cannot.
    await card.locator('tr[data-member="vm-0001"] [data-state="waiting"]').waitFor({ timeout: 60_000 });
    await card.getByRole('button', { name: 'Sync now' }).click();
    const dialog = card.getByRole('dialog');
    await dialog.waitFor();
    assert.match(await dialog.textContent() ?? '', /Confirm “Sync now” for 3 members/);
    const cannot = dialog.locator('li[data-member]');
    assert.equal(await cannot.count(), 1);
    assert.match(await cannot.textContent() ?? '', /vm-0002: job vm-0002 is created; a sync can start only when it is waiting/);
    assert.equal((await cli<{ job: { state: string } }>(['job', 'show', 'two-disks'])).job.state, 'waiting', 'nothing started before the confirm');
    await shot('workgroup-confirm');
    await dialog.getByRole('button', { name: 'Confirm' }).click();
    await card.getByRole('status').filter({ hasText: 'Done: 2 of 3 members' }).waitFor();
    assert.match(await card.getByRole('status').textContent() ?? '', /vm-0002: job vm-0002 is created/);
    await shot('workgroup');
  });

  await t.test('complete a job: its final sync runs and it ends completed', async () => {
    await page.goto(`${base}/console/#/jobs/two-disks`);
    await page.locator('h1 [data-state="waiting"]').waitFor({ timeout: 60_000 });
    await page.getByRole('button', { name: 'Complete' }).click();
    await page.locator('h1 [data-state="completed"]').waitFor({ timeout: 90_000 });
    await page.locator('table.cycles tr[data-cycle="committed"]', { hasText: 'final' }).waitFor();
    await shot('job-completed');
    await page.getByRole('link', { name: 'Jobs', exact: true }).click();
    assert.equal(await state('two-disks'), 'completed');
    assert.match(await page.locator('tr[data-job="two-disks"]').textContent() ?? '', /✓ completed/, 'state as symbol and word, not colour alone');
  });

  await t.test('switch the language: Japanese labels (and Chinese), kept across a reload', async () => {
    await page.getByRole('link', { name: 'Overview', exact: true }).click();
    await page.locator('header select').selectOption('ja');
    await page.getByRole('heading', { name: '概要' }).waitFor();
    for (const label of ['ジョブ', 'ワークグループ', 'インベントリ']) await page.getByRole('link', { name: label }).waitFor();
    assert.equal(await page.evaluate('document.documentElement.lang'), 'ja');
    await shot('overview-ja');
    await page.getByRole('link', { name: 'ジョブ', exact: true }).click();
    await page.getByRole('columnheader', { name: '次回同期' }).waitFor();
    await page.reload();
    await page.getByRole('link', { name: 'ジョブ', exact: true }).waitFor();
    await page.locator('header select').selectOption('zh');
    await page.getByRole('link', { name: '作业', exact: true }).waitFor();
    await page.locator('header select').selectOption('en');
    await page.getByRole('link', { name: 'Overview', exact: true }).click();
    await page.locator('[data-testid="receivers"] [data-testid="dedup"]').waitFor();
    await shot('overview');
  });

  await t.test('after a connector restart the page says it lost the connection, reconnects and says so', async () => {
    connector.kill('SIGTERM');
    await new Promise((r) => connector.once('exit', r));
    await page.locator('[data-conn="lost"]').waitFor({ timeout: 20_000 });
    assert.match(await page.locator('[data-conn]').textContent() ?? '', /reconnecting/);
    await shot('reconnecting');
    connector = await serve();
    await page.locator('[data-conn="reconnected"]').waitFor({ timeout: 30_000 });
    assert.match(await page.locator('[data-conn]').textContent() ?? '', /Reconnected/);
    // The session outlived the restart: the page still acts.
    await page.getByRole('link', { name: 'Jobs', exact: true }).click();
    assert.equal(await state('two-disks'), 'completed');
  });
});
