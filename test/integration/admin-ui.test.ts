// The /admin status page in real headless Chromium against a real stack: sign in with the admin token,
// see the pool with its usage bar, upload a JPEG through the drop box (session, then the direct upload to
// the storage node), and see the variant thumbnails load. Any console error (a CSP violation included)
// fails the test. Leaves a screenshot in test/artifacts/admin.png.
import fs from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { chromium, type Browser } from 'playwright-core';
import { ADMIN_CSP } from '../../services/api/admin-ui.js';
import { FIXTURES, ROOT, getJson, makeUser, startInProcess, testEnv } from '../helpers/stack.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARTIFACTS = path.join(ROOT, 'test', 'artifacts');

t.test('admin status page', async (t) => {
  const env = await testEnv(t);
  const node = await startInProcess(env);
  t.teardown(() => node.close());
  const api = node.url;
  const admin = env.secrets.ADMIN_TOKEN;

  await t.test('static files and the overview endpoint', async (t) => {
    const page = await fetch(`${api}/admin`);
    t.equal(page.status, 200);
    t.match(page.headers.get('content-type'), /^text\/html/);
    t.equal(page.headers.get('content-security-policy'), ADMIN_CSP, 'CSP on the page');
    t.equal(page.headers.get('x-frame-options'), 'DENY');
    const html = await page.text();
    t.notMatch(html, /<script>|<style>| on[a-z]+=| style=/i, 'no inline script, style or handlers');
    const js = await fetch(`${api}/admin/app.js`);
    t.equal(js.status, 200);
    t.match(js.headers.get('content-type'), /^text\/javascript/);
    t.equal(js.headers.get('content-security-policy'), ADMIN_CSP);
    t.notMatch(
      await js.text(),
      /innerHTML|outerHTML|insertAdjacentHTML|document\.write/,
      'no HTML sinks in the script',
    );
    t.equal((await fetch(`${api}/admin/style.css`)).status, 200);
    t.equal((await fetch(`${api}/admin/..%2Fadmin.ts`)).status, 404, 'only the three files');
    t.equal((await fetch(`${api}/admin/secrets.json`)).status, 404);

    const anon = await getJson(`${api}/api/admin/overview`);
    t.equal(anon.status, 401);
    t.match(anon.body, { error: { code: 'invalid_admin_token' } });
    const o = await getJson(`${api}/api/admin/overview`, admin);
    t.equal(o.status, 200);
    t.match(o.body, {
      node_id: node.config.nodeId,
      pools: [{ name: 'default', used_bytes: Number, file_count: Number, health: { healthy: true } }],
      projector: { head: Number, checkpoint: Number, lag: Number },
      images: { pending: Number, processing: Number, failed: Number },
      backups: Array,
      failed_jobs: Array,
      failed_images: Array,
    });
    t.ok(
      (o.body.consumers as { kind: string }[]).some((c) => c.kind === 'processor'),
      'consumers listed with their kind',
    );
  });

  await t.test('in Chromium: sign in, pools, drag-and-drop upload, thumbnails', async (t) => {
    const user = await makeUser(env, 'premium_max');
    let browser: Browser;
    try {
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: [
          '--headless',
          '--no-sandbox',
          '--disable-gpu',
          '--disable-quic',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
        ],
      });
    } catch (err) {
      t.fail(`cannot start Chromium at ${CHROMIUM}: ${(err as Error).message}`);
      return;
    }
    t.teardown(() => browser.close());
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const problems: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console: ${m.text()}`);
    });
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    page.on('requestfailed', (r) =>
      problems.push(`request failed: ${r.url()} ${r.failure()?.errorText ?? ''}`),
    );

    await page.goto(`${api}/admin`);
    await page.locator('#admin-token').waitFor({ state: 'visible' });

    // A wrong token is refused and not kept.
    await page.fill('#admin-token', 'not-the-token');
    await page.click('#login-form button[type=submit]');
    await page.locator('#login-error').filter({ hasText: 'not accepted' }).waitFor();
    t.equal(
      await page.evaluate(() => sessionStorage.getItem('pixelfox.adminToken')),
      null,
      'a refused token is not stored',
    );
    problems.length = 0; // the 401 of the wrong token is logged by the browser; that one is expected

    await page.fill('#admin-token', admin);
    await page.click('#login-form button[type=submit]');
    const pool = page.locator('article.pool', { hasText: 'default' });
    await pool.waitFor();
    t.equal(
      await page.evaluate(() => sessionStorage.getItem('pixelfox.adminToken')),
      admin,
      'token kept in sessionStorage',
    );
    t.equal(await pool.locator('.bar[role=progressbar] .fill').count(), 1, 'pool has a usage bar');
    t.match(await pool.locator('.badge').first().textContent(), 'healthy');
    t.ok((await page.locator('#consumers tbody tr[data-consumer]').count()) >= 6, 'consumer lag table');
    t.match(await page.locator('#projector').textContent(), /lag \d+ events/);

    // Reload: the session survives in this tab.
    await page.reload();
    await pool.waitFor();

    // The upload box: the drop zone and the click both feed the hidden file input.
    t.equal(await page.locator('#file-input').isHidden(), true, 'file input hidden behind the drop zone');
    await page.fill('#api-key', user.apiKey);
    await page.setInputFiles('#file-input', path.join(FIXTURES, 'Canon_40D.jpg'));
    await page.locator('#upload-status.ok').waitFor({ timeout: 60_000 });
    await page.waitForFunction(
      () => {
        const imgs = [...document.querySelectorAll<HTMLImageElement>('#variants img')];
        return imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0);
      },
      undefined,
      { timeout: 30_000 },
    );
    const imageId = await page.locator('#upload-status').getAttribute('data-image-id');
    t.ok(imageId, 'the uploaded image id');
    const img = await getJson(`${api}/api/v1/images/${imageId}`, user.apiKey);
    const variants = img.body.variants as { type: string }[];
    t.ok(variants.length >= 3, `${variants.length} variants`);
    t.equal(await page.locator('#variants img').count(), variants.length, 'one thumbnail per variant');
    const sizes = await page.$$eval('#variants img', (imgs) =>
      imgs.map((i) => (i as HTMLImageElement).naturalWidth),
    );
    t.ok(
      sizes.every((w) => w > 0),
      `every thumbnail decoded (${sizes.join(', ')})`,
    );

    // Data is text, never markup: a file name full of HTML shows as typed.
    const evil = '<img src=x onerror=window.__xss=1>.jpg';
    await page.setInputFiles('#file-input', {
      name: evil,
      mimeType: 'image/jpeg',
      buffer: await fs.readFile(path.join(FIXTURES, 'Nikon_D70.jpg')),
    });
    await page.locator('#upload-status.ok', { hasText: evil }).waitFor({ timeout: 60_000 });
    t.equal(
      await page.evaluate(() => (window as unknown as { __xss?: number }).__xss ?? null),
      null,
      'no script ran',
    );
    t.equal(await page.locator('img[src="x"]').count(), 0, 'no element made from the file name');
    await page.waitForFunction(() =>
      [...document.querySelectorAll<HTMLImageElement>('#variants img')].every(
        (i) => i.complete && i.naturalWidth > 0,
      ),
    );

    // Usage of the pool moved after the uploads (the page refreshed itself after each).
    await page.locator('article.pool', { hasText: /[1-9]\d* files/ }).waitFor();

    t.same(problems, [], 'no console errors, CSP violations or failed requests');
    await fs.mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'admin.png'), fullPage: true });
    t.pass('screenshot in test/artifacts/admin.png');
  });
});
