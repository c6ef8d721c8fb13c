#!/usr/bin/env node
// verify_jwt.mjs - independent check of the identity JWTs portcullis signs.
//
// Uses `jose` (panva), not our Rust code, so the end-to-end tests catch a token that only our
// own verifier would accept. Accepts ES256 only, requires a `kid` in the header (Grafana and
// other consumers select keys by kid), checks signature, audience and exp/nbf.
//
//   node testkit/js/verify_jwt.mjs --jwks-file JWKS.json --token JWT --audience AUD [--issuer ISS]
//
// Success: prints {"header":{...},"payload":{...}} on stdout, exit 0.
// Failure (bad token, bad arguments, jose missing): prints the reason on stderr, exit 1.
// jose is loaded from examples/demo/node_modules (run `npm ci` in examples/demo first); it is
// resolved relative to this file, so the script works from any working directory.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      'jwks-file': { type: 'string' },
      token: { type: 'string' },
      audience: { type: 'string' },
      issuer: { type: 'string' },
    },
  }));
  for (const name of ['jwks-file', 'token', 'audience']) {
    if (!opts[name]) throw new Error(`--${name} is required`);
  }
} catch (err) {
  console.error(`usage: verify_jwt.mjs --jwks-file F --token T --audience A [--issuer I]: ${err.message}`);
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

try {
  const jwks = JSON.parse(readFileSync(opts['jwks-file'], 'utf8'));
  const header = jose.decodeProtectedHeader(opts.token);
  // Without this check a single-key JWKS would also match a token that names no key.
  if (typeof header.kid !== 'string' || header.kid === '') throw new Error('JWT header has no kid');
  const { payload, protectedHeader } = await jose.jwtVerify(opts.token, jose.createLocalJWKSet(jwks), {
    algorithms: ['ES256'],
    audience: opts.audience,
    ...(opts.issuer ? { issuer: opts.issuer } : {}),
  });
  console.log(JSON.stringify({ header: protectedHeader, payload }));
  process.exit(0);
} catch (err) {
  console.error(err.code ? `${err.code}: ${err.message}` : err.message);
  process.exit(1);
}
