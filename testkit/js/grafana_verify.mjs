#!/usr/bin/env node
// grafana_verify.mjs - checks an identity JWT the way Grafana's `[auth.jwt]` does, with a JOSE
// library other than ours (`jose`, panva), so the tests see what Grafana would make of it.
//
//   node testkit/js/grafana_verify.mjs (--jwks-url URL | --jwks-file F) --token T
//        [--expect-claims JSON] [--email-claim email] [--username-claim preferred_username]
//        [--role-attribute-path role]
//
// What it copies from Grafana (pkg/services/auth/jwt and pkg/services/authn/clients/jwt.go):
// - the header value may start with "Bearer "; '=' padding is dropped;
// - the key is picked from the JWKS by `kid`, matched exactly: a token without a kid, or with
//   one the JWKS does not hold, fails with "no keys found";
// - ES256 only (Grafana accepts more; one Grafana version accepted ES256 only);
// - exp, nbf and iat are checked when present, with go-jose's 1 minute leeway;
// - expect_claims: iss and sub must be equal, aud must be the same list (go-jose v2), any
//   other key must be deeply equal;
// - `sub` is required; the login comes from the username claim, the email from the email
//   claim, and at least one of them must be there (Grafana then uses the email as the login
//   of a new user when there is no username);
// - the role is read at role_attribute_path (a plain dotted path here, JMESPath in Grafana).
// Success: prints {"sub","login","email","name","role","kid"} on stdout, exit 0.
// Failure: prints the reason on stderr, exit 1. jose comes from examples/demo/node_modules.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isDeepStrictEqual } from 'node:util';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const LEEWAY_SECS = 60;

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      'jwks-url': { type: 'string' },
      'jwks-file': { type: 'string' },
      token: { type: 'string' },
      'expect-claims': { type: 'string', default: '{}' },
      'email-claim': { type: 'string', default: 'email' },
      'username-claim': { type: 'string', default: 'preferred_username' },
      'role-attribute-path': { type: 'string', default: '' },
    },
  }));
  if (!opts.token) throw new Error('--token is required');
  if (!opts['jwks-url'] === !opts['jwks-file']) throw new Error('give one of --jwks-url, --jwks-file');
} catch (err) {
  console.error(`usage: grafana_verify.mjs (--jwks-url U | --jwks-file F) --token T [...]: ${err.message}`);
  process.exit(1);
}

const demoRequire = createRequire(new URL('../../examples/demo/package.json', import.meta.url));
let jose;
try {
  jose = await import(pathToFileURL(demoRequire.resolve('jose')).href);
} catch (err) {
  console.error(`cannot load jose from examples/demo/node_modules (run npm ci there): ${err.message}`);
  process.exit(1);
}

class Rejected extends Error {}

async function loadJwks() {
  if (opts['jwks-file']) return JSON.parse(readFileSync(opts['jwks-file'], 'utf8'));
  const response = await fetch(opts['jwks-url']);
  if (!response.ok) throw new Rejected(`GET ${opts['jwks-url']}: ${response.status}`);
  return response.json();
}

function audienceList(value, what) {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value) && value.every((v) => typeof v === 'string')) return value;
  throw new Rejected(`"aud" ${what} has an invalid type`);
}

function checkRegistered(claims, expect) {
  const now = Date.now() / 1000;
  for (const key of ['iss', 'sub']) {
    if (key in claims && typeof claims[key] !== 'string') throw new Rejected(`"${key}" claim has invalid type`);
  }
  for (const key of ['exp', 'nbf', 'iat']) {
    if (claims[key] != null && typeof claims[key] !== 'number') throw new Rejected(`"${key}" claim has invalid type`);
  }
  if (expect.iss !== undefined && claims.iss !== expect.iss) throw new Rejected('square/go-jose/jwt: validation failed, invalid issuer claim (iss)');
  if (expect.sub !== undefined && claims.sub !== expect.sub) throw new Rejected('square/go-jose/jwt: validation failed, invalid subject claim (sub)');
  if (expect.aud !== undefined) {
    const want = audienceList(expect.aud, 'expectation');
    const got = 'aud' in claims ? audienceList(claims.aud, 'claim') : [];
    if (!isDeepStrictEqual(want, got)) throw new Rejected('square/go-jose/jwt: validation failed, invalid audience claim (aud)');
  }
  if (claims.exp != null && now - LEEWAY_SECS > claims.exp) throw new Rejected('square/go-jose/jwt: validation failed, token is expired (exp)');
  if (claims.nbf != null && now + LEEWAY_SECS < claims.nbf) throw new Rejected('square/go-jose/jwt: validation failed, token not valid yet (nbf)');
  if (claims.iat != null && now + LEEWAY_SECS < claims.iat) throw new Rejected('square/go-jose/jwt: validation failed, token issued in the future (iat)');
  for (const [key, value] of Object.entries(expect)) {
    if (['iss', 'sub', 'aud'].includes(key)) continue;
    if (!(key in claims)) throw new Rejected(`"${key}" claim is missing`);
    if (!isDeepStrictEqual(claims[key], value)) throw new Rejected(`"${key}" claim mismatch`);
  }
}

function lookup(claims, path) {
  let value = claims;
  for (const part of path.split('.')) {
    if (value === null || typeof value !== 'object') return undefined;
    value = value[part];
  }
  return value;
}

try {
  const raw = opts.token.replace(/^Bearer /, '').replaceAll('=', '');
  const header = jose.decodeProtectedHeader(raw);
  if (header.alg !== 'ES256') throw new Rejected(`unexpected signature algorithm ${JSON.stringify(header.alg)}`);
  const jwks = await loadJwks();
  const kid = typeof header.kid === 'string' ? header.kid : '';
  const candidates = (jwks.keys ?? []).filter((k) => (k.kid ?? '') === kid && kid !== '');
  if (candidates.length === 0) throw new Rejected('failed to verify JWT: no keys found');
  let payload;
  let lastError;
  for (const jwk of candidates) {
    try {
      const key = await jose.importJWK(jwk, 'ES256');
      ({ payload } = await jose.compactVerify(raw, key, { algorithms: ['ES256'] }));
      break;
    } catch (err) {
      lastError = err;
    }
  }
  if (!payload) throw new Rejected(`failed to verify JWT: ${lastError?.message ?? 'bad signature'}`);
  const claims = JSON.parse(new TextDecoder().decode(payload));
  checkRegistered(claims, JSON.parse(opts['expect-claims']));

  if (typeof claims.sub !== 'string' || claims.sub === '') throw new Rejected("missing mandatory 'sub' claim in JWT");
  const text = (v) => (typeof v === 'string' ? v : '');
  const login = text(claims[opts['username-claim']]);
  const email = text(claims[opts['email-claim']]);
  if (login === '' && email === '') throw new Rejected('missing login and email claim in JWT');
  const role = opts['role-attribute-path'] ? text(lookup(claims, opts['role-attribute-path'])) : '';
  console.log(JSON.stringify({
    sub: claims.sub,
    login: login || email,
    email,
    name: text(claims.name),
    role,
    kid,
  }));
  process.exit(0);
} catch (err) {
  console.error(err instanceof Rejected ? err.message : `${err.code ?? 'error'}: ${err.message}`);
  process.exit(1);
}
