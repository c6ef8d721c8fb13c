#!/usr/bin/env node
// sign_jwt.mjs - signs a JWT with a portcullis signing key, the way portcullis does, using
// `jose` (panva) instead of our Rust code. Tests use it to make tokens portcullis would never
// hand out (already expired, say) that are still signed by the real key.
//
//   node testkit/js/sign_jwt.mjs --key-file KEY.pem --claims '{"sub":"alice",...}' [--alg RS256]
//
// KEY.pem is a PKCS#8 P-256 private key (`portcullis keygen`), or with --alg RS256 an RSA one
// (the dev IdP's, `idp.mjs --key-out`). The header is {"alg":ALG,"typ":"JWT","kid":K}, where
// K is the key's RFC 7638 thumbprint (SHA-256, base64url) computed here, independently of
// portcullis. The claims are signed as given.
// Success: prints {"token":"...","kid":"..."} on stdout, exit 0. Failure: reason on stderr, exit 1.
// jose is loaded from examples/demo/node_modules (run `npm ci` in examples/demo first).

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      'key-file': { type: 'string' },
      claims: { type: 'string' },
      alg: { type: 'string', default: 'ES256' },
    },
  }));
  for (const name of ['key-file', 'claims']) {
    if (!opts[name]) throw new Error(`--${name} is required`);
  }
} catch (err) {
  console.error(`usage: sign_jwt.mjs --key-file KEY.pem --claims JSON: ${err.message}`);
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
  const pem = readFileSync(opts['key-file'], 'utf8');
  const key = await jose.importPKCS8(pem, opts.alg, { extractable: true });
  // The thumbprint takes only the public members it needs.
  const kid = await jose.calculateJwkThumbprint(await jose.exportJWK(key), 'sha256');
  const claims = JSON.parse(opts.claims);
  const token = await new jose.SignJWT(claims)
    .setProtectedHeader({ alg: opts.alg, typ: 'JWT', kid })
    .sign(key);
  console.log(JSON.stringify({ token, kid }));
  process.exit(0);
} catch (err) {
  console.error(err.code ? `${err.code}: ${err.message}` : err.message);
  process.exit(1);
}
