#!/usr/bin/env node
// cockpit_browser.mjs - a real browser (Debian's chromium, driven by npm playwright-core)
// goes from a Cockpit URL behind portcullis through the IdP's login form into the Cockpit
// shell, for the Cockpit end-to-end tests.
//
//   node testkit/js/cockpit_browser.mjs --url https://cockpit.localhost:PORT/ \
//     --user alice --password alice --expect-user alice --screenshot OUT.png \
//     [--chromium /usr/bin/chromium] [--timeout-ms 60000]
//
// Chromium resolves *.localhost to loopback by itself; the test CA is not installed, so
// certificate errors are ignored (the TLS path is covered by the other tests).
//
// Prints one JSON object on stdout and exits 0 when the shell showed --expect-user:
//   {"ok":true, "steps":[URL...], "login_form_url":..., "current_username":"alice",
//    "final_url":..., "title":..., "shell_text":...}
// On failure prints the same object with "ok":false and "error", saves the screenshot
// anyway, and exits 1.

import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({
  options: {
    url: { type: 'string' },
    user: { type: 'string' },
    password: { type: 'string' },
    'expect-user': { type: 'string' },
    screenshot: { type: 'string' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    'timeout-ms': { type: 'string', default: '60000' },
  },
});
for (const name of ['url', 'user', 'password', 'expect-user', 'screenshot']) {
  if (!opts[name]) {
    console.error(`cockpit_browser.mjs: --${name} is required`);
    process.exit(1);
  }
}
const timeout = Number(opts['timeout-ms']);

const demoRequire = createRequire(new URL('../../examples/demo/package.json', import.meta.url));
const { chromium } = demoRequire('playwright-core');

const profile = mkdtempSync(join(tmpdir(), 'portcullis-chromium-'));
const result = { ok: false, steps: [] };
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: opts.chromium,
    headless: true,
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 800 },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-quic',
    ],
    timeout,
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(timeout);
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame() && result.steps.at(-1) !== frame.url()) result.steps.push(frame.url());
  });

  // 1. The Cockpit URL sends us via the auth host to the IdP's login form.
  await page.goto(opts.url);
  await page.waitForSelector('input[name="login"]');
  result.login_form_url = page.url();
  await page.fill('input[name="login"]', opts.user);
  await page.fill('input[name="password"]', opts.password);
  await Promise.all([
    page.waitForURL((u) => u.origin === new URL(opts.url).origin),
    page.click('button[type="submit"], input[type="submit"]'),
  ]);

  // 2. Back on Cockpit: login.js does GET /cockpit/login (portcullis adds the credentials),
  //    then loads the shell, with no second form. The shell's host switcher names the user:
  //    <span id="current-username">alice</span>@host (Cockpit 287).
  await page.waitForSelector('#toggle-menu', { state: 'visible' });
  await page.waitForFunction((name) => {
    const el = document.querySelector('#current-username');
    return el && el.textContent.trim() === name;
  }, opts['expect-user']);
  // The title ("Overview - alice@host") is set apart from the switcher, a moment later.
  await page.waitForFunction((name) => document.title.includes(`${name}@`), opts['expect-user']);
  result.current_username = (await page.textContent('#current-username')).trim();
  result.final_url = page.url();
  result.title = await page.title();
  result.shell_text = (await page.evaluate(() => document.body.innerText)).slice(0, 600);
  await page.screenshot({ path: opts.screenshot });
  result.ok = true;
} catch (err) {
  result.error = String(err && err.message ? err.message : err).slice(0, 2000);
  try {
    const page = context && context.pages()[0];
    if (page) {
      result.final_url = page.url();
      result.shell_text = (await page.evaluate(() => document.body.innerText)).slice(0, 1500);
      await page.screenshot({ path: opts.screenshot });
    }
  } catch {
    // The report below is what matters.
  }
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
