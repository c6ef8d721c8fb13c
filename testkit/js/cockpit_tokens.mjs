#!/usr/bin/env node
// cockpit_tokens.mjs - Cockpit login tokens, good and bad, for the `portcullis pam-verify`
// process tests. Signed with `jose` (panva), not our Rust code, so the verifier is checked
// against an independent implementation of the token format.
//
//   node testkit/js/cockpit_tokens.mjs --key SIGNING_KEY.pem --issuer ISS --audience AUD --account NAME
//
// Prints one JSON object on stdout, case name -> token:
//   valid             ES256, typ cockpit+jwt, kid = RFC 7638 thumbprint of the key, iss,
//                     aud = cockpit:AUD, sub = account, iat now, exp = iat + 60, short jti
//                     (the shape portcullis issues)
//   identity_jwt      an identity JWT's shape: typ JWT, aud = AUD (token confusion)
//   bare_aud          typ cockpit+jwt but aud = AUD without the cockpit: form
//   no_typ            the valid claims without typ
//   wrong_iss         iss is another origin
//   wrong_signature   same header (same kid) and claims, signed by another P-256 key
//   wrong_aud         aud is another host
//   expired           iat and exp ten minutes ago
//   iat_in_future     iat ten minutes ahead
//   wrong_account     sub is "root"
//   alg_none          {"alg":"none"} with an empty signature
//   hs256_public_key  HS256 whose HMAC secret is the public key (SPKI PEM): key confusion
//   no_kid            ES256 without a kid
//   truncated         the valid token without its last 10 characters
// Exit 1 with the reason on stderr on bad arguments. jose is loaded from
// examples/demo/node_modules, resolved relative to this file.

import { createPrivateKey, createPublicKey, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      key: { type: 'string' },
      issuer: { type: 'string' },
      audience: { type: 'string' },
      account: { type: 'string' },
    },
  }));
  for (const name of ['key', 'issuer', 'audience', 'account']) {
    if (!opts[name]) throw new Error(`--${name} is required`);
  }
} catch (err) {
  console.error(`usage: cockpit_tokens.mjs --key PEM --issuer ISS --audience AUD --account NAME: ${err.message}`);
  process.exit(1);
}

const demoRequire = createRequire(new URL('../../examples/demo/package.json', import.meta.url));
const jose = await import(pathToFileURL(demoRequire.resolve('jose')).href);

const key = createPrivateKey(readFileSync(opts.key, 'utf8'));
const publicJwk = await jose.exportJWK(createPublicKey(key));
const kid = await jose.calculateJwkThumbprint(publicJwk, 'sha256');
const { privateKey: otherKey } = await jose.generateKeyPair('ES256');

const now = Math.floor(Date.now() / 1000);
const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
const claims = (over = {}) => ({
  iss: opts.issuer,
  aud: `cockpit:${opts.audience}`,
  sub: opts.account,
  iat: now,
  exp: now + 60,
  jti: randomBytes(9).toString('base64url'),
  ...over,
});
const es256 = (payload, signer = key, header = { alg: 'ES256', typ: 'cockpit+jwt', kid }) =>
  new jose.SignJWT(payload).setProtectedHeader(header).sign(signer);

const valid = await es256(claims());
const spki = createPublicKey(key).export({ type: 'spki', format: 'pem' });
const tokens = {
  valid,
  wrong_signature: await es256(claims(), otherKey),
  wrong_aud: await es256(claims({ aud: 'cockpit:evil.localhost:8443' })),
  identity_jwt: await es256(claims({ aud: opts.audience }), key, { alg: 'ES256', typ: 'JWT', kid }),
  bare_aud: await es256(claims({ aud: opts.audience })),
  no_typ: await es256(claims(), key, { alg: 'ES256', kid }),
  wrong_iss: await es256(claims({ iss: 'https://evil.localhost:8443' })),
  expired: await es256(claims({ iat: now - 660, exp: now - 600 })),
  iat_in_future: await es256(claims({ iat: now + 600, exp: now + 660 })),
  wrong_account: await es256(claims({ sub: 'root' })),
  alg_none: `${b64({ alg: 'none', typ: 'cockpit+jwt', kid })}.${b64(claims())}.`,
  hs256_public_key: await new jose.SignJWT(claims())
    .setProtectedHeader({ alg: 'HS256', typ: 'cockpit+jwt', kid })
    .sign(Buffer.from(spki)),
  no_kid: await es256(claims(), key, { alg: 'ES256', typ: 'cockpit+jwt' }),
  truncated: valid.slice(0, -10),
};
console.log(JSON.stringify(tokens));
