// The dashboard (dashboard/, docs/manage.md#the-dashboard) in a real
// browser: Debian's chromium driven by playwright-core, against an nginx
// that serves the static files and the management API, a PostgreSQL key
// store and a redis-server of this suite's own.  Sign in by keyboard, a
// key made in the page and used on /redis/, rotated, revoked (401), usage
// appearing after traffic, a key named like an HTML injection shown as
// text, another organization's ids answering 404, the token kept in
// sessionStorage only.  Screenshots at 360 px and 1280 px go to
// build/dashboard-screenshots/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import {
  startRedis, startNginx, startPg, sleep, stopAll, REPO_ROOT,
} from './harness.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SHOTS = path.join(REPO_ROOT, 'build', 'dashboard-screenshots');
const XSS = '<img src=x onerror=alert(1)>';

let chromium;
let browser;
let page;
let pg;
let redisSrv;
let ng;
let acmeInst;
let manager;
let globexKeyId;
const dialogs = [];   // alert() would land here: an injection that ran

before(async () => {
  ({ chromium } = await import('playwright-core'));
  [pg, redisSrv] = await Promise.all([startPg(), startRedis()]);
  await pg.admin('org', 'create', 'acme', '--plan', 'pro');
  await pg.admin('org', 'create', 'globex');
  acmeInst = (await pg.admin('instance', 'create', 'acme', 'main',
    `127.0.0.1:${redisSrv.port}`, '--db', '4')).instance_id;
  manager = await pg.admin('key', 'create', 'acme', 'console', '--scopes', 'manage');
  globexKeyId = (await pg.admin('key', 'create', 'globex', 'app')).key_id;
  ng = await startNginx({
    logLevel: 'info',
    http: [
      `redisgate_pg "${pg.conninfo('application_name=rg-dashboard')}";`,
      'redisgate_cache zone=dash_keys:1m ttl=60s;',
      'redisgate_usage zone=dash_usage:1m interval=500ms;',
      'redisgate_limit zone=dash_rates:1m;',
    ].join('\n'),
    locations: [
      'location /redisgate/api/ { redisgate_manage; }',
      `location /redisgate/dashboard/ { alias ${path.join(REPO_ROOT, 'dashboard')}/;`
        + ' types { text/html html; text/css css; text/javascript js; } }',
    ],
  });
  for (let i = 0; i < 100 && !(await pg.listening('rg-dashboard')); i++) await sleep(50);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: ng.base });
  page = await context.newPage();
  page.on('dialog', (d) => {
    dialogs.push(`${d.type()}: ${d.message()}`);
    // the page's own prompt and confirm are answered by the tests
    if (d.type() === 'alert') d.dismiss();
  });
  mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await stopAll(ng, redisSrv, pg);
});

const data = async (token, rest) => {
  const r = await fetch(`${ng.base}/redis/${acmeInst}${rest}`, { headers: { authorization: `Bearer ${token}` } });
  return r.status;
};

// the page's own dialogs (prompt, confirm) answered with value
function answerNext(value) {
  page.once('dialog', (d) => (d.type() === 'alert' ? undefined : d.accept(value)));
}

test('the page loads, and signs in by keyboard; the token lives in sessionStorage only', async (t) => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} (make test-deps installs Debian's chromium)`);
  const r = await page.goto(`${ng.base}/redisgate/dashboard/`);
  assert.equal(r.status(), 200);
  await page.focus('#token');
  await page.keyboard.type(manager.token);
  await page.keyboard.press('Enter');
  await page.waitForSelector('#tabs:not([hidden])');
  assert.equal(await page.textContent('#who'), 'acme (pro)');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('redisgate.manage.token')), manager.token);
  assert.deepEqual(await page.context().cookies(), [], 'no cookie');
  assert.ok(!page.url().includes(manager.token), 'not in the URL');
  assert.match(await page.textContent('#org-details'), /1000 commands\/s/);
  assert.match(await page.textContent('#rate-now'), /^\d+ of 2000 commands left/, 'the live state');
  const shot = path.join(SHOTS, 'organization-1280.png');
  await page.screenshot({ path: shot, fullPage: true });
  t.diagnostic(`screenshot: ${shot}`);
});

test('a key made in the page (named like an injection, shown as text) works on /redis/; rotated; revoked: 401', async (t) => {
  await page.click('#tabs button[data-tab=keys]');
  await page.fill('#key-name', XSS);
  await page.check('input[name=scope][value=write]');
  await page.click('#key-form button[type=submit]');
  await page.waitForSelector('#token-box:not([hidden])');
  const token = await page.textContent('#token-value');
  assert.match(token, /^rg_[0-9a-f]{64}$/);
  assert.equal(await page.textContent('#token-name'), XSS, 'the name, as text');
  assert.equal(await data(token, '/set/dash/1'), 200);

  await page.click('#token-copy');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), token, 'Copy puts the token on the clipboard');
  await page.click('#token-done');
  assert.equal(await page.textContent('#token-value'), '', 'the token is gone from the page');

  // the row: the name as text, no element made of it
  const row = page.locator('#keys-rows tr', { hasText: XSS });
  await row.waitFor();
  assert.equal(await page.locator('#keys-rows img').count(), 0);
  assert.equal(await row.locator('td').first().textContent(), XSS);

  answerNext('1 minute');
  await row.getByRole('button', { name: /^Rotate/ }).click();
  await page.waitForSelector('#token-box:not([hidden])');
  const rotated = await page.textContent('#token-value');
  assert.notEqual(rotated, token);
  assert.equal(await data(rotated, '/get/dash'), 200);
  await page.click('#token-done');

  // the new key (the same name, active): revoke it
  const active = page.locator('#keys-rows tr', { hasText: XSS }).filter({ hasText: 'active' })
    .filter({ hasText: rotated.slice(0, 10) });
  answerNext();
  await active.getByRole('button', { name: /^Revoke/ }).click();
  await page.locator('#keys-rows tr', { hasText: rotated.slice(0, 10) }).filter({ hasText: 'revoked' }).waitFor();
  let status;
  for (let i = 0; i < 40; i++) {
    status = await data(rotated, '/get/dash');
    if (status === 401) break;
    await sleep(50);
  }
  assert.equal(status, 401);
  assert.deepEqual(dialogs.filter((d) => d.startsWith('alert')), [], 'no injected script ran');
  const shot = path.join(SHOTS, 'keys-1280.png');
  await page.screenshot({ path: shot, fullPage: true });
  t.diagnostic(`screenshot: ${shot}`);
});

test('usage appears after traffic; the audit log shows the changes', async (t) => {
  const key = await pg.admin('key', 'create', 'acme', 'traffic', '--scopes', 'read,write');
  for (let i = 0; i < 5; i++) assert.equal(await data(key.token, `/incr/dash-${i}`), 200);
  await page.click('#tabs button[data-tab=usage]');
  let total = '';
  for (let i = 0; i < 40; i++) {
    await page.click('#usage-form button[type=submit]');
    await sleep(150);
    total = await page.textContent('#usage-total');
    const m = /^(\d+) requests/.exec(total);
    if (m && Number(m[1]) >= 5) break;
  }
  t.diagnostic(`usage shown: ${total}`);
  assert.match(total, /^([5-9]|\d\d+) requests/);
  assert.ok(await page.locator('#chart-commands rect').count() >= 1, 'a bar in the chart');

  await page.click('#tabs button[data-tab=audit]');
  await page.locator('#audit-rows tr', { hasText: 'key.revoke' }).waitFor();
  assert.ok(await page.locator('#audit-rows tr', { hasText: 'key.create' }).count() >= 1);
  assert.ok(await page.locator('#audit-rows tr', { hasText: manager.key_id }).count() >= 3, 'who: the console\'s key');
});

test('another organization\'s ids answer 404 from the page; at 360 px it reads', async (t) => {
  const status = await page.evaluate(async (id) => {
    const r = await fetch(`../api/v1/keys/${id}`, {
      headers: { authorization: `Bearer ${sessionStorage.getItem('redisgate.manage.token')}` },
    });
    return r.status;
  }, globexKeyId);
  assert.equal(status, 404);

  await page.setViewportSize({ width: 360, height: 800 });
  await page.click('#tabs button[data-tab=keys]');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page fits 360 px (${overflow} px over); wide tables scroll in their box`);
  const shot = path.join(SHOTS, 'keys-360.png');
  await page.screenshot({ path: shot, fullPage: true });
  t.diagnostic(`screenshot: ${shot}`);

  await page.click('#signout');
  await page.waitForSelector('#signin:not([hidden])');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('redisgate.manage.token')), null, 'signed out: gone');
});
