use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};

use super::*;
use crate::core::User;
use crate::identity::generate_pkcs8_pem;

const NOW: u64 = 1_800_000_000;
const AUD: &str = "cockpit.localhost:8443";
const ISS: &str = "https://auth.localhost:8443";

fn keys() -> SigningKeys {
    SigningKeys::from_pem(&generate_pkcs8_pem()).unwrap()
}

fn token_of(basic: &str) -> (String, String) {
    let decoded = String::from_utf8(
        STANDARD
            .decode(basic.strip_prefix("Basic ").unwrap())
            .unwrap(),
    )
    .unwrap();
    let (user, token) = decoded.split_once(':').unwrap();
    (user.to_string(), token.to_string())
}

/// The claims of a token, unverified.
fn token_claims(token: &str) -> serde_json::Map<String, serde_json::Value> {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn auds() -> Vec<String> {
    vec![AUD.to_string()]
}

fn sign(keys: &SigningKeys, claims: serde_json::Value) -> String {
    sign_typed(keys, Some(COCKPIT_TOKEN_TYP), claims)
}

fn sign_typed(keys: &SigningKeys, typ: Option<&str>, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(keys.kid().to_string());
    header.typ = typ.map(str::to_string);
    jsonwebtoken::encode(&header, &claims, keys.encoding_key()).unwrap()
}

#[test]
fn a_minted_credential_verifies_for_its_account_only() {
    let k = keys();
    let basic = basic_credential(&k, ISS, "alice", false, AUD, NOW).unwrap();
    let (user, token) = token_of(&basic);
    assert_eq!(user, "alice");
    assert!(
        token.len() < 400,
        "compact token expected, got {} bytes",
        token.len()
    );
    assert!(
        !verify(&token, "alice", k.jwks(), ISS, &auds(), NOW)
            .unwrap()
            .admin
    );
    verify(&token, "alice", k.jwks(), ISS, &auds(), NOW + 59).unwrap();
    // Administrative access is in the token only when granted.
    let (_, admin) = token_of(&basic_credential(&k, ISS, "alice", true, AUD, NOW).unwrap());
    assert!(
        verify(&admin, "alice", k.jwks(), ISS, &auds(), NOW)
            .unwrap()
            .admin
    );
    assert!(!token_claims(&token).contains_key("adm"));
    assert!(matches!(
        verify(&token, "bob", k.jwks(), ISS, &auds(), NOW),
        Err(VerifyError::WrongAccount { .. })
    ));
}

#[test]
fn every_bad_token_is_refused() {
    let k = keys();
    let other = keys();
    let (_, good) = token_of(&basic_credential(&k, ISS, "alice", false, AUD, NOW).unwrap());
    let claims = |aud: &str, iat: u64, exp: u64| serde_json::json!({"iss": ISS, "aud": cockpit_audience(aud), "sub": "alice", "iat": iat, "exp": exp, "jti": "x"});

    // Signed by a key that is not in the JWKS, but claiming the right kid.
    let mut forged_header = Header::new(Algorithm::ES256);
    forged_header.kid = Some(k.kid().to_string());
    forged_header.typ = Some(COCKPIT_TOKEN_TYP.into());
    let forged = jsonwebtoken::encode(
        &forged_header,
        &claims(AUD, NOW, NOW + 60),
        other.encoding_key(),
    )
    .unwrap();
    // HS256 "signed" with the public key material, the classic key-confusion attack.
    let jwk = &k.jwks().keys[0];
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(k.kid().to_string());
    hs_header.typ = Some(COCKPIT_TOKEN_TYP.into());
    let hs = jsonwebtoken::encode(
        &hs_header,
        &claims(AUD, NOW, NOW + 60),
        &EncodingKey::from_secret(format!("{}{}", jwk.x, jwk.y).as_bytes()),
    )
    .unwrap();
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"none","typ":"{COCKPIT_TOKEN_TYP}","kid":"{}"}}"#,
            k.kid()
        )),
        URL_SAFE_NO_PAD.encode(claims(AUD, NOW, NOW + 60).to_string())
    );
    let garbage = "A".repeat(1 << 20);
    let cases: Vec<(&str, String, u64)> = vec![
        ("wrong signature", forged, NOW),
        (
            "wrong aud",
            sign(&k, claims("evil.localhost", NOW, NOW + 60)),
            NOW,
        ),
        ("expired", good.clone(), NOW + 60 + LEEWAY_SECS + 1),
        (
            "iat in the future",
            sign(&k, claims(AUD, NOW + 600, NOW + 660)),
            NOW,
        ),
        ("alg none", none, NOW),
        ("HS256 with the public key", hs, NOW),
        ("truncated", good[..good.len() - 10].to_string(), NOW),
        (
            "no signature",
            good.rsplit_once('.').unwrap().0.to_string(),
            NOW,
        ),
        ("empty", String::new(), NOW),
        ("1 MiB of garbage", garbage, NOW),
        ("not a jwt", "hunter2".to_string(), NOW),
        (
            "no sub",
            sign(
                &k,
                serde_json::json!({"iss": ISS, "aud": cockpit_audience(AUD), "iat": NOW, "exp": NOW + 60}),
            ),
            NOW,
        ),
        // Token confusion (finding 2 of the review): an identity JWT from the same key, as
        // every upstream on a Cockpit host sees it, with the claim shape it really has.
        (
            "an identity JWT",
            sign_typed(
                &k,
                Some("JWT"),
                serde_json::json!({"iss": ISS, "aud": AUD, "sub": "alice", "iat": NOW, "exp": NOW + 60, "jti": "x"}),
            ),
            NOW,
        ),
        (
            "an identity-shaped token with the Cockpit typ",
            sign(
                &k,
                serde_json::json!({"iss": ISS, "aud": AUD, "sub": "alice", "iat": NOW, "exp": NOW + 60, "jti": "x"}),
            ),
            NOW,
        ),
        (
            "a Cockpit-shaped token without typ",
            sign_typed(&k, None, claims(AUD, NOW, NOW + 60)),
            NOW,
        ),
        (
            "another issuer",
            sign(
                &k,
                serde_json::json!({"iss": "https://evil.localhost", "aud": cockpit_audience(AUD), "sub": "alice", "iat": NOW, "exp": NOW + 60, "jti": "x"}),
            ),
            NOW,
        ),
        (
            "no issuer",
            sign(
                &k,
                serde_json::json!({"aud": cockpit_audience(AUD), "sub": "alice", "iat": NOW, "exp": NOW + 60, "jti": "x"}),
            ),
            NOW,
        ),
        (
            "a token for another Cockpit host",
            sign(&k, claims("other.localhost:8443", NOW, NOW + 60)),
            NOW,
        ),
    ];
    for (what, token, now) in cases {
        let result = verify(&token, "alice", k.jwks(), ISS, &auds(), now);
        assert!(result.is_err(), "{what} must be refused");
    }
    // And the good one, to show the cases above fail for their own reason.
    verify(&good, "alice", k.jwks(), ISS, &auds(), NOW).unwrap();
}

#[test]
fn attack_a_real_identity_jwt_is_not_a_cockpit_password() {
    let k = std::sync::Arc::new(keys());
    let minter = crate::identity::TokenMinter::new(ISS.into(), k.clone());
    let alice = User {
        subject: "alice".into(),
        email: Some("alice@example.com".into()),
        email_verified: true,
        name: None,
        preferred_username: Some("alice".into()),
        groups: vec![],
        claims: Vec::new(),
    };
    let (identity, _) = minter.mint(&alice, "sid", AUD, None, NOW);
    assert!(
        identity.len() <= PAM_MAX_TOKEN_BYTES,
        "short enough to be tried"
    );
    let err = verify(&identity, "alice", k.jwks(), ISS, &auds(), NOW).unwrap_err();
    assert!(matches!(err, VerifyError::WrongType(_)), "{err}");
    // Root is refused even with a genuine token for it.
    let (_, root) = token_of(&basic_credential(&k, ISS, "root", false, AUD, NOW).unwrap());
    let err = verify(&root, "root", k.jwks(), ISS, &auds(), NOW).unwrap_err();
    assert!(matches!(err, VerifyError::SystemAccount(_)), "{err}");
}

#[test]
fn system_accounts_are_refused_by_uid() {
    // uid 0 and the daemon accounts Debian always has.
    for name in ["root", "daemon", "nobody"] {
        assert!(
            matches!(
                check_account(name, DEFAULT_MIN_UID),
                Err(VerifyError::SystemAccount(_))
            ),
            "{name}"
        );
    }
    assert!(matches!(
        check_account("no-such-user-here", DEFAULT_MIN_UID),
        Err(VerifyError::NoSuchAccount(_))
    ));
    // daemon (uid 1) passes only when the admin lowers the bound explicitly.
    assert!(check_account("daemon", 1).is_ok());
}

#[test]
fn the_token_fits_pams_limit_or_is_refused_clearly() {
    let k = keys();
    // A long but realistic host and a 32-character account still fit.
    let host = format!("{}.example.com:8443", "cockpit-".repeat(6));
    let account = "a".repeat(32);
    // With administrative access, the longest a token gets.
    let (_, token) = token_of(&basic_credential(&k, ISS, &account, true, &host, NOW).unwrap());
    assert!(token.len() <= PAM_MAX_TOKEN_BYTES, "{} bytes", token.len());
    assert!(
        verify(&token, &account, k.jwks(), ISS, &[host], NOW)
            .unwrap()
            .admin
    );
    // An absurd host name cannot fit, and says so.
    let err = basic_credential(&k, ISS, "alice", false, &"x".repeat(400), NOW).unwrap_err();
    assert!(err.to_string().contains("511"), "{err}");
}

#[test]
fn a_token_is_accepted_once_with_a_replay_dir() {
    let k = keys();
    let (_, token) = token_of(&basic_credential(&k, ISS, "alice", false, AUD, NOW).unwrap());
    let verified = verify(&token, "alice", k.jwks(), ISS, &auds(), NOW).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "portcullis-replay-{}",
        crate::crypto::random_token(6)
    ));
    claim_once(&dir, &verified).unwrap();
    assert!(matches!(
        claim_once(&dir, &verified),
        Err(VerifyError::Replayed)
    ));
    let other = verify(
        &token_of(&basic_credential(&k, ISS, "alice", false, AUD, NOW).unwrap()).1,
        "alice",
        k.jwks(),
        ISS,
        &auds(),
        NOW,
    )
    .unwrap();
    claim_once(&dir, &other).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn refusals_name_the_algorithm() {
    let k = keys();
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode("{}")
    );
    let err = verify(&none, "alice", k.jwks(), ISS, &auds(), NOW).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"token rejected: algorithm "none" is not ES256"#
    );
}
