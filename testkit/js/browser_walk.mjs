#!/usr/bin/env node
// browser_walk.mjs - a real browser (Debian's chromium, driven by npm playwright-core) walks
// through portcullis's pages step by step, for the browser tests (tests/e2e_browser.rs).
// The steps only act and record; the test decides what is right.
//
//   node testkit/js/browser_walk.mjs --plan '{"ca": "target/test-certs/ca.pem",
//     "artifacts": "tests/artifacts", "timeout_ms": 60000, "steps": [STEP...]}'
//
// Each step names the browser context it runs in; a name not seen before is a fresh
// context (its own cookies, as another person's browser). The actions:
//   {"name", "context", "action": "goto", "url"}
//   {"name", "context", "action": "sign_in", "user", "password", "until"}
//       fill the IdP's login form on the current page, submit it, wait for a URL that
//       starts with "until"
//   {"name", "context", "action": "sign_out", "until"}
//       press the Sign out button on the current (portcullis) page and wait for a URL that
//       starts with "until": the dev IdP's RP-initiated logout confirms itself (its page
//       submits its own form), so the browser comes back on its own
//   {"name", "context", "action": "cockpit_shell", "expect_user"}
//       wait for the Cockpit shell's host switcher and title to name the user
//
// The test CA (--plan's "ca") is trusted the way a user would trust it: it goes into an NSS
// database in a temporary HOME (certutil, Debian's libnss3-tools), which is where Chromium
// on Linux looks. Certificate errors are not ignored. Chromium resolves *.localhost to
// loopback by itself, so the URLs carry Envoy's port.
//
// Prints one JSON object on stdout: {"ok": bool, "steps": [RESULT...]}, where each RESULT is
//   {"name", "ok", "error"?, "url", "status", "headers", "title", "text", "body",
//    "requests": [{"method", "url", "status"}...], "console", "screenshot",
//    "current_username"?}
// ("requests": every main-frame navigation request of the step, redirects included; "text":
// what the page shows; "body": the document's response body; "console": the page's console
// errors and warnings, CSP violations among them). A failing step ends the walk
// (its screenshot is still taken) and the script exits 1.

import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({ options: { plan: { type: 'string' } } });
if (!opts.plan) {
  console.error('browser_walk.mjs: --plan JSON is required');
  process.exit(2);
}
const plan = JSON.parse(opts.plan);
const timeout = plan.timeout_ms ?? 60000;
const artifacts = resolve(plan.artifacts);
mkdirSync(artifacts, { recursive: true });

const demoRequire = createRequire(new URL('../../examples/demo/package.json', import.meta.url));
const { chromium } = demoRequire('playwright-core');

// A HOME of our own whose NSS database trusts the CA for TLS servers (C,,) and nothing else.
const home = mkdtempSync(join(tmpdir(), 'portcullis-chromium-home-'));
const nssdb = `sql:${join(home, '.pki', 'nssdb')}`;
mkdirSync(join(home, '.pki', 'nssdb'), { recursive: true });
execFileSync('certutil', ['-d', nssdb, '-N', '--empty-password']);
// "ca": null leaves the database empty: a browser never told of the CA, which must refuse
// the test servers (the check that nothing here ignores certificate errors).
if (plan.ca) {
  execFileSync('certutil', ['-d', nssdb, '-A', '-n', 'portcullis-test-ca', '-t', 'C,,', '-i', resolve(plan.ca)]);
}

const report = { ok: false, steps: [] };
const contexts = new Map();
let browser;

/// The page of the named context, made (fresh) on first use.
async function pageOf(name) {
  if (!contexts.has(name)) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    page.setDefaultTimeout(timeout);
    const entry = { page, requests: [], last: null, console: [] };
    // What the page itself complains of: a Content-Security-Policy violation (a blocked
    // style, a form or redirect it refuses) shows only here, not as a failed request.
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') entry.console.push(m.text());
    });
    page.on('pageerror', (e) => entry.console.push(`uncaught: ${e.message}`));
    page.on('request', (r) => {
      if (r.isNavigationRequest() && r.frame() === page.mainFrame()) {
        entry.requests.push({ method: r.method(), url: r.url(), status: null, request: r });
      }
    });
    page.on('response', (r) => {
      const req = r.request();
      if (!req.isNavigationRequest() || req.frame() !== page.mainFrame()) return;
      const seen = entry.requests.findLast((x) => x.request === req);
      if (seen) seen.status = r.status();
      entry.last = r;
    });
    contexts.set(name, entry);
  }
  return contexts.get(name);
}

const startsWith = (prefix) => (url) => url.href.startsWith(prefix);

async function act(step, entry) {
  const { page } = entry;
  switch (step.action) {
    case 'goto':
      await page.goto(step.url);
      break;
    case 'sign_in':
      await page.waitForSelector('input[name="login"]');
      await page.fill('input[name="login"]', step.user);
      await page.fill('input[name="password"]', step.password);
      await Promise.all([
        page.waitForURL(startsWith(step.until)),
        page.click('button[type="submit"], input[type="submit"]'),
      ]);
      break;
    case 'sign_out':
      await Promise.all([
        page.waitForURL(startsWith(step.until)),
        page.click('form[method="post"] button:has-text("Sign out")'),
      ]);
      break;
    case 'cockpit_shell': {
      // login.js does GET /cockpit/login (portcullis adds the credentials), then loads the
      // shell, with no second form. The host switcher names the user:
      // <span id="current-username">alice</span>@host (Cockpit 287); the title ("Overview -
      // alice@host") is set apart from it, a moment later.
      await page.waitForSelector('#toggle-menu', { state: 'visible' });
      await page.waitForFunction((name) => {
        const el = document.querySelector('#current-username');
        return el && el.textContent.trim() === name;
      }, step.expect_user);
      await page.waitForFunction((name) => document.title.includes(`${name}@`), step.expect_user);
      break;
    }
    default:
      throw new Error(`unknown action ${JSON.stringify(step.action)}`);
  }
  await page.waitForLoadState('load');
}

/// What the page shows now, and how it got there.
async function describe(step, entry, result) {
  const { page } = entry;
  result.url = page.url();
  result.requests = entry.requests.map(({ method, url, status }) => ({ method, url, status }));
  result.console = entry.console;
  result.title = await page.title();
  result.text = await page.evaluate(() => (document.body ? document.body.innerText : ''));
  if (entry.last) {
    result.status = entry.last.status();
    result.headers = entry.last.headers();
    result.body = await entry.last.text().catch(() => null);
  }
  if (step.action === 'cockpit_shell') {
    result.current_username = await page.textContent('#current-username').then((t) => t.trim(), () => null);
  }
}

try {
  browser = await chromium.launch({
    executablePath: plan.chromium ?? '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
    env: { ...process.env, HOME: home },
    timeout,
  });
  for (const step of plan.steps) {
    const result = { name: step.name, context: step.context, action: step.action, ok: false };
    report.steps.push(result);
    const entry = await pageOf(step.context);
    entry.requests = [];
    entry.last = null;
    entry.console = [];
    result.screenshot = join(artifacts, `${step.name}.png`);
    try {
      await act(step, entry);
      result.ok = true;
    } catch (err) {
      result.error = String(err && err.message ? err.message : err).slice(0, 2000);
    }
    try {
      await describe(step, entry, result);
      await entry.page.screenshot({ path: result.screenshot });
    } catch (err) {
      result.ok = false;
      result.error = `${result.error ?? ''}\nrecording the page: ${err.message ?? err}`.trim();
    }
    if (!result.ok) break;
  }
  report.ok = report.steps.length === plan.steps.length && report.steps.every((s) => s.ok);
} catch (err) {
  report.error = String(err && err.message ? err.message : err).slice(0, 2000);
} finally {
  if (browser) await browser.close().catch(() => {});
  rmSync(home, { recursive: true, force: true });
}
console.log(JSON.stringify(report));
process.exit(report.ok ? 0 : 1);
