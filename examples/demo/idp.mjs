#!/usr/bin/env node
// idp.mjs - development OpenID Connect provider for the portcullis demo and end-to-end tests.
//
// Built on npm `oidc-provider` (panva) so portcullis talks to a real, certified OP: discovery,
// JWKS, authorization code + PKCE (S256, required), refresh tokens, RP-initiated logout.
// The login form is our own (devInteractions is off) and checks passwords; consent is granted
// automatically. Everything is in memory and lost on exit. NOT for production use.
//
//   node examples/demo/idp.mjs --port 9000 [--issuer http://127.0.0.1:9000] --client-id portcullis \
//     --client-secret-file FILE --redirect-uri URI [--redirect-uri URI ...] \
//     [--post-logout-redirect-uri URI ...] [--host 127.0.0.1] [--key-out FILE]
//
// --key-out writes the signing key (PKCS#8 PEM, mode 0600) for tests that sign tokens the
// IdP would never issue (expired, for another audience) with its real key.
//
// Prints "ready issuer=<issuer> port=<port>" once listening; exits 0 on SIGTERM/SIGINT.
// With --port 0 (and no --issuer) a free port is picked and shown in the ready line.

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { parseArgs } from 'node:util';

import { calculateJwkThumbprint, exportJWK, exportPKCS8, generateKeyPair } from 'jose';
import Provider from 'oidc-provider';

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string', default: '9000' },
    host: { type: 'string', default: '127.0.0.1' },
    issuer: { type: 'string' },
    'client-id': { type: 'string', default: 'portcullis' },
    'client-secret-file': { type: 'string' },
    'redirect-uri': { type: 'string', multiple: true, default: [] },
    'post-logout-redirect-uri': { type: 'string', multiple: true, default: [] },
    // Short access tokens and rotating refresh tokens, to exercise portcullis's refresh.
    'access-token-ttl': { type: 'string', default: '3600' },
    'rotate-refresh-tokens': { type: 'boolean', default: false },
    // OpenID Connect Back-Channel Logout: where to POST the logout token when a session
    // ends here, and the CA that URL's certificate chains to.
    'backchannel-logout-uri': { type: 'string' },
    'ca-file': { type: 'string' },
    'key-out': { type: 'string' },
  },
});

function die(msg) {
  console.error(`idp: ${msg}`);
  process.exit(64);
}
if (!opts['client-secret-file']) die('--client-secret-file is required');
if (opts['redirect-uri'].length === 0) die('at least one --redirect-uri is required');
// Trailing newline/whitespace from `echo secret > file` must not become part of the secret.
const clientSecret = readFileSync(opts['client-secret-file'], 'utf8').trim();
if (!clientSecret) die(`${opts['client-secret-file']} is empty`);

// Demo users. Passwords equal the user name; claims are what portcullis maps to its identity.
const USERS = {
  alice: {
    password: 'alice',
    claims: {
      sub: 'alice', email: 'alice@example.com', email_verified: true,
      name: 'Alice Example', preferred_username: 'alice', groups: ['admins'],
    },
  },
  bob: {
    password: 'bob',
    claims: {
      sub: 'bob', email: 'bob@example.com', email_verified: true,
      name: 'Bob Example', preferred_username: 'bob', groups: [],
    },
  },
};

const digest = (s) => createHash('sha256').update(String(s ?? '')).digest();
function checkPassword(login, password) {
  const user = Object.hasOwn(USERS, login) ? USERS[login] : undefined;
  // Compare digests in constant time; unknown users cost the same as known ones.
  const ok = timingSafeEqual(digest(password), digest(user ? user.password : randomBytes(16)));
  return user && ok ? login : undefined;
}

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:sans-serif;max-width:22rem;margin:3rem auto}label,input,button{display:block;width:100%;margin:.3rem 0}
.error{color:#b00020}.hint{color:#666;font-size:.9em}</style></head>
<body><h1>${esc(title)}</h1>${body}</body></html>`;
}

function loginPage({ login = '', error = '' } = {}) {
  // No action attribute: the browser posts back to /interaction/<uid>, where the (path-scoped,
  // SameSite=Lax) interaction cookie is sent; that cookie also protects the form against CSRF.
  return page('Sign in to the demo IdP', `
${error ? `<p class="error" role="alert">${esc(error)}</p>` : ''}
<form method="post" autocomplete="off">
  <label for="login">Username</label>
  <input id="login" name="login" type="text" value="${esc(login)}" required autofocus>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" required>
  <button type="submit">Sign in</button>
</form>
<p class="hint">Demo users: alice / alice (group admins), bob / bob (no groups).</p>`);
}

// Signing key generated at every start: tokens from an earlier run become invalid, which is
// what a dev IdP should do. RS256 because it is the ID-token alg every RP (and the openidconnect
// crate by default) accepts.
const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), alg: 'RS256', use: 'sig' };
jwk.kid = await calculateJwkThumbprint(jwk);
if (opts['key-out']) writeFileSync(opts['key-out'], await exportPKCS8(privateKey), { mode: 0o600 });

// Bind first so that --port 0 works: the issuer must contain the real port.
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(opts.port), opts.host, resolve);
});
const { port } = server.address();
const issuer = opts.issuer ?? `http://${opts.host}:${port}`;

const configuration = {
  clients: [{
    client_id: opts['client-id'],
    client_secret: clientSecret,
    redirect_uris: opts['redirect-uri'],
    post_logout_redirect_uris: opts['post-logout-redirect-uri'],
    grant_types: ['authorization_code', 'refresh_token'],
    ...(opts['backchannel-logout-uri'] ? {
      backchannel_logout_uri: opts['backchannel-logout-uri'],
      backchannel_logout_session_required: true,
    } : {}),
    response_types: ['code'],
    // oidc-provider accepts client_secret_post too for a client registered as _basic.
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [jwk] },
  responseTypes: ['code'], // authorization code flow only
  // scope -> claims. conformIdTokenClaims: false puts these claims into the ID token itself
  // (not only at /me), which is where portcullis reads them.
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  conformIdTokenClaims: false,
  async findAccount(_ctx, sub) {
    const user = Object.hasOwn(USERS, sub) ? USERS[sub] : undefined;
    if (!user) return undefined;
    // The provider filters these by the granted scopes/claims.
    return { accountId: sub, claims: async () => ({ ...user.claims, groups: [...user.claims.groups] }) };
  },
  // Back-channel logout requests go to *.localhost hosts, which Node does not resolve:
  // those are sent to 127.0.0.1 (with their own name for TLS), trusting --ca-file.
  fetch: localhostFetch,
  features: {
    backchannelLogout: { enabled: Boolean(opts['backchannel-logout-uri']) },
    devInteractions: { enabled: false }, // our own login form below
    rpInitiatedLogout: {
      enabled: true,
      // One confirmation POST is required by oidc-provider (xsrf). Submit it automatically, and
      // with logout=yes, which ends the whole IdP session (not only this client's grant).
      async logoutSource(ctx, form) {
        ctx.body = page('Signing out', `
${form.replace('</form>', '<input type="hidden" name="logout" value="yes"/><button type="submit">Sign out</button></form>')}
<script>document.getElementById('op.logoutForm').submit()</script>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.body = page('Signed out', '<p>You are signed out of the demo IdP.</p>');
      },
    },
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  pkce: { required: () => true }, // S256 is the only method oidc-provider 9 supports
  // Refresh tokens for our client without asking for offline_access; they still die with the
  // IdP session (expiresWithSession default), so logging out at the IdP revokes them.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Every refresh spends the refresh token and issues a new one (when asked to): a second
  // use of a spent one is refused, as a real IdP with rotation does.
  rotateRefreshToken: () => opts['rotate-refresh-tokens'],
  ttl: {
    AccessToken: Number(opts['access-token-ttl']),
    AuthorizationCode: 60,
    IdToken: 60 * 60,
    RefreshToken: 24 * 60 * 60,
    Interaction: 60 * 60,
    Session: 24 * 60 * 60,
    Grant: 24 * 60 * 60,
  },
  cookies: {
    // Cookies ignore ports: prefix the names so they cannot clash with other demo services on
    // 127.0.0.1. Not Secure: the issuer is plain http. SameSite=Lax still rides along on the
    // top-level redirects from the https *.localhost hosts (GET /auth, GET /session/end).
    names: { session: '_idp_session', interaction: '_idp_interaction', resume: '_idp_interaction_resume' },
    keys: [randomBytes(32).toString('base64url')],
    long: { httpOnly: true, sameSite: 'lax', signed: true },
    short: { httpOnly: true, sameSite: 'lax', signed: true },
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('IdP error', `<p class="error">${esc(out.error)}: ${esc(out.error_description)}</p>`);
  },
};

function localhostFetch(url, options = {}) {
  const target = new URL(url);
  if (!target.hostname.endsWith('.localhost')) return globalThis.fetch(url, options);
  const ca = opts['ca-file'] ? readFileSync(opts['ca-file']) : undefined;
  return new Promise((resolve, reject) => {
    const req = https.request(target, {
      method: options.method ?? 'GET',
      headers: Object.fromEntries(new Headers(options.headers ?? {})),
      ca,
      servername: target.hostname,
      lookup: (_host, o, cb) => (o.all ? cb(null, [{ address: '127.0.0.1', family: 4 }]) : cb(null, '127.0.0.1', 4)),
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve(new Response(Buffer.concat(chunks), { status: res.statusCode })));
    });
    req.on('error', reject);
    if (options.body !== undefined) req.write(String(options.body));
    req.end();
  });
}

const provider = new Provider(issuer, configuration);
provider.on('backchannel.success', (_ctx, _client, sub, sid) => console.log(`idp: backchannel logout sent sub=${sub} sid=${sid}`));
provider.on('backchannel.error', (_ctx, err) => console.error(`idp: backchannel logout failed: ${err.message}`));
// One line per token-endpoint grant, so that tests can count refreshes.
provider.on('grant.success', (ctx) => console.log(`idp: grant ${ctx.oidc.params.grant_type}`));
for (const event of ['server_error', 'authorization.error', 'grant.error', 'end_session.error',
  'userinfo.error', 'introspection.error', 'revocation.error']) {
  provider.on(event, (_ctx, err) => console.error(`idp: ${event}: ${err.message}${err.error_description ? ` (${err.error_description})` : ''}`));
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 16384) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

function send(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'x-frame-options': 'DENY',
  });
  res.end(html);
}

// GET /interaction/<uid>: login form, or auto-consent. POST /interaction/<uid>: check password.
async function interaction(req, res) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    // Cookie missing/expired (e.g. the page was reloaded after finishing): start over at the RP.
    return send(res, 400, page('Sign-in expired', `<p class="error">${esc(err.error_description ?? err.message)}</p>`));
  }
  const { prompt, params, session, grantId } = details;

  if (prompt.name === 'login') {
    if (req.method !== 'POST') return send(res, 200, loginPage({ login: params.login_hint }));
    const form = await readForm(req);
    const accountId = checkPassword(form.get('login'), form.get('password'));
    if (!accountId) {
      return send(res, 401, loginPage({ login: form.get('login'), error: 'Invalid username or password.' }));
    }
    console.log(`idp: login ok: ${accountId}`);
    return provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
  }

  if (prompt.name === 'consent') {
    // First-party demo client: grant exactly what was asked for, without a consent screen.
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const result = { consent: { grantId: await grant.save() } };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
  }

  return send(res, 501, page('Not implemented', `<p>prompt ${esc(prompt.name)}</p>`));
}

const oidc = provider.callback();
server.on('request', (req, res) => {
  res.on('finish', () => console.log(`idp: ${req.method} ${req.url.split('?')[0]} ${res.statusCode}`));
  if (/^\/interaction\/[^/?]+(\?|$)/.test(req.url) && (req.method === 'GET' || req.method === 'POST')) {
    interaction(req, res).catch((err) => {
      console.error(`idp: interaction error: ${err.stack}`);
      if (!res.headersSent) send(res, 500, page('IdP error', '<p class="error">internal error</p>'));
    });
  } else {
    oidc(req, res);
  }
});

function shutdown(signal) {
  console.log(`idp: ${signal}, exiting`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

console.log(`idp: ready issuer=${issuer} port=${port} client_id=${opts['client-id']}`);
