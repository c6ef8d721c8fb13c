//! What `pam-verify` reads: the password Cockpit hands PAM, for `PAM_USER`, checked by
//! `cockpit::verify` against the fixture's JWKS. The first byte picks the shape:
//! - 0: `0xff`-separated token text and user; `{cockpit}` stands for a real Cockpit login
//!   token for alice and `{identity}` for a real identity JWT from the same key;
//! - 1: edits (pairs of bytes) applied to the real Cockpit token, then a user;
//! - 2: header JSON, claims JSON and signature bytes, encoded into a JWT here, so that the
//!   fuzzer reaches the header checks, the key lookup and the signature check; `{kid}` in
//!   the header stands for the signing key's id, `{sig}` as the signature for the real
//!   token's.
//!
//! Invariant: nothing verifies but the unmodified minted Cockpit token for alice (no
//! signature can be forged; an identity JWT is never a Cockpit password), and nothing
//! panics.

#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use portcullis::cockpit::{basic_credential, verify};
use portcullis::core::unix_now as now;
use portcullis_fuzz::{APP, COCKPIT, fields, fixture};

struct Tokens {
    /// A genuine Cockpit login token for alice on [`COCKPIT`], and when it was minted.
    cockpit: String,
    minted_at: u64,
    /// An identity JWT for the very same host and account: only its kind differs.
    identity: String,
}

fn tokens() -> &'static Tokens {
    static T: OnceLock<Tokens> = OnceLock::new();
    T.get_or_init(|| {
        let f = fixture();
        let (keys, issuer) = (
            f.app.tokens().minter().keys(),
            f.app.tokens().minter().issuer(),
        );
        let minted_at = now();
        // With administrative access (alice is in the fixture's admins): the `adm` claim is
        // part of what no edit may forge.
        let basic = basic_credential(keys, issuer, "alice", true, COCKPIT, minted_at).unwrap();
        let decoded = STANDARD
            .decode(basic.strip_prefix("Basic ").unwrap())
            .unwrap();
        let cockpit = String::from_utf8(decoded).unwrap()["alice:".len()..].to_string();
        verify(
            &cockpit,
            "alice",
            keys.jwks(),
            issuer,
            &audiences(),
            minted_at,
        )
        .expect("a fresh Cockpit token verifies")
        .admin
        .then_some(())
        .expect("it grants administrative access");
        let (identity, _) = f.app.tokens().minter().mint(
            &f.session.user,
            &f.session.public_id(),
            COCKPIT,
            None,
            minted_at,
        );
        Tokens {
            cockpit,
            minted_at,
            identity,
        }
    })
}

fn audiences() -> Vec<String> {
    vec![COCKPIT.to_string(), APP.to_string()]
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let t = tokens();
    let (token, user) = match mode % 3 {
        0 => {
            let [token, user]: [String; 2] = fields(rest, 2).try_into().unwrap();
            let token = token
                .replace("{cockpit}", &t.cockpit)
                .replace("{identity}", &t.identity);
            (token, user)
        }
        1 => {
            let [ops, user]: [String; 2] = fields(rest, 2).try_into().unwrap();
            (edit(&t.cockpit, ops.as_bytes()), user)
        }
        _ => {
            let [header, claims, signature, user]: [String; 4] =
                fields(rest, 4).try_into().unwrap();
            let header = header.replace("{kid}", fixture().app.tokens().minter().keys().kid());
            let signature = match signature.as_str() {
                // The real token's signature, on whatever header and claims.
                "{sig}" => t.cockpit.rsplit('.').next().unwrap().to_string(),
                s => URL_SAFE_NO_PAD.encode(s),
            };
            let token = format!(
                "{}.{}.{signature}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            (token, user)
        }
    };
    let f = fixture();
    // Pinned to the minting time, so that the real token stays valid for the whole run.
    let result = verify(
        &token,
        &user,
        f.app.tokens().minter().keys().jwks(),
        f.app.tokens().minter().issuer(),
        &audiences(),
        t.minted_at,
    );
    if result.is_ok() {
        assert_eq!(user, "alice", "verified for {user:?}");
        assert!(
            token == t.cockpit,
            "a token we never minted verified: {token:?}"
        );
    }
});

/// Applies edits to `value`, driven by `ops` in pairs: (kind, argument).
fn edit(value: &str, ops: &[u8]) -> String {
    let mut v: Vec<u8> = value.as_bytes().to_vec();
    for op in ops.chunks(2) {
        let (kind, arg) = (op[0], op.get(1).copied().unwrap_or(0));
        if v.is_empty() {
            break;
        }
        let at = usize::from(arg) * v.len() / 256;
        match kind % 6 {
            0 => v[at] ^= 1 << (kind >> 5),
            1 => v[at] = arg,
            2 => v.truncate(at),
            3 => {
                v.remove(at);
            }
            4 => v.insert(at, b"AQgw_-=.+/ "[usize::from(kind >> 4) % 11]),
            // Swap two of the three parts (header, claims, signature).
            _ => {
                let text = String::from_utf8_lossy(&v).into_owned();
                let mut parts: Vec<&str> = text.split('.').collect();
                if parts.len() >= 2 {
                    let (i, j) = (
                        usize::from(arg) % parts.len(),
                        usize::from(kind >> 3) % parts.len(),
                    );
                    parts.swap(i, j);
                }
                v = parts.join(".").into_bytes();
            }
        }
    }
    String::from_utf8_lossy(&v).into_owned()
}
