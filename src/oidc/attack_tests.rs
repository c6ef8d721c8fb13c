//! Attacks on ID token verification, run in-process against a client built exactly as
//! `OpenIdConnect::client_from` builds it (from provider metadata holding a test P-256 JWKS).
//!
//! Every refusal asserts the reason it was refused for, and `control_*` tests show that a
//! correct token passes, so a refusal cannot come from a broken fixture.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openidconnect::core::{
    CoreJsonWebKey, CoreJsonWebKeySet, CoreJwsSigningAlgorithm, CoreResponseType,
    CoreSubjectIdentifierType,
};
use openidconnect::{
    AuthUrl, EmptyAdditionalProviderMetadata, IssuerUrl, JsonWebKeySetUrl, LogoutProviderMetadata,
    ProviderMetadataWithLogout, ResponseTypes,
};
use serde_json::{Value, json};
use url::Url;

use super::{OidcError, OpenIdConnect, Provider, user_from_verified_token, verify_id_token};
use crate::config::{IdpConfig, UserInfoMode};
use crate::identity::{SigningKeys, generate_pkcs8_pem};
use crate::secret::SecretString;

const ISSUER: &str = "https://idp.example/realms/corp";
const CLIENT_ID: &str = "portcullis";
const CLIENT_SECRET: &str = "portcullis-client-secret";
const NONCE: &str = "n-0S6_WzA2Mj";

/// The IdP: its signing key, and our client configured from its metadata.
struct Idp {
    keys: SigningKeys,
    provider: Provider,
}

impl Idp {
    /// Metadata advertising ES256 only, as our test IdP signs.
    fn new() -> Self {
        Self::with_algs(vec![CoreJwsSigningAlgorithm::EcdsaP256Sha256], None)
    }

    /// An IdP advertising `algs`, with `idp.id_token_algs` set to `configured`.
    fn with_algs(algs: Vec<CoreJwsSigningAlgorithm>, configured: Option<&[&str]>) -> Self {
        let keys = SigningKeys::from_pem(&generate_pkcs8_pem()).unwrap();
        let jwk: CoreJsonWebKey =
            serde_json::from_value(serde_json::to_value(&keys.jwks().keys[0]).unwrap()).unwrap();
        let metadata = ProviderMetadataWithLogout::new(
            IssuerUrl::new(ISSUER.to_string()).unwrap(),
            AuthUrl::new(format!("{ISSUER}/protocol/openid-connect/auth")).unwrap(),
            JsonWebKeySetUrl::new(format!("{ISSUER}/protocol/openid-connect/certs")).unwrap(),
            vec![ResponseTypes::new(vec![CoreResponseType::Code])],
            vec![CoreSubjectIdentifierType::Public],
            algs,
            LogoutProviderMetadata {
                end_session_endpoint: None,
                additional_metadata: EmptyAdditionalProviderMetadata {},
            },
        )
        .set_jwks(CoreJsonWebKeySet::new(vec![jwk]));
        let oidc = OpenIdConnect::new(
            IdpConfig {
                issuer: ISSUER.to_string(),
                client_id: CLIENT_ID.to_string(),
                client_secret: Some(SecretString::new(CLIENT_SECRET)),
                scopes: vec!["openid".into()],
                groups_claim: "groups".into(),
                assume_email_verified: false,
                userinfo: UserInfoMode::Auto,
                token_endpoint_auth: None,
                client_key: None,
                id_token_algs: configured.map(|c| c.iter().map(|a| a.to_string()).collect()),
                policy_claims: Vec::new(),
                bearer_audiences: None,
                probe_interval: crate::config::DEFAULT_IDP_PROBE_INTERVAL,
            },
            &Url::parse("https://auth.example/callback").unwrap(),
            &Url::parse("https://auth.example/").unwrap(),
        );
        let provider = oidc.provider_from(metadata);
        Self { keys, provider }
    }

    fn kid(&self) -> String {
        self.keys.kid().to_string()
    }

    /// Signs `claims` with the IdP's key, `kid` set as the IdP does.
    fn sign(&self, claims: &Value) -> String {
        es256(claims, &self.kid(), self.keys.encoding_key())
    }

    fn verify(&self, token: &str) -> Result<(), OidcError> {
        verify_id_token(&self.provider, token, Some(NONCE))
    }

    fn accepts(&self, token: &str) {
        if let Err(e) = self.verify(token) {
            panic!("a correct token was refused: {e}");
        }
    }

    /// Asserts a refusal, for a reason whose message contains `why`.
    fn refuses(&self, token: &str, why: &str) {
        match self.verify(token) {
            Ok(()) => panic!("accepted a token that must be refused ({why})"),
            Err(e @ (OidcError::IdToken(_) | OidcError::AlgorithmRefused { .. })) => {
                let msg = e.to_string();
                assert!(msg.contains(why), "refused, but for `{msg}`, not `{why}`")
            }
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }
}

fn es256(claims: &Value, kid: &str, key: &EncodingKey) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A correct set of claims: right `iss`, `aud` = our client id, `nonce`, `exp` ahead, `iat` now.
fn good_claims() -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "sub": "f3a2c1d0-alice",
        "aud": CLIENT_ID,
        "exp": now + 300,
        "iat": now,
        "nonce": NONCE,
        "email": "alice@corp.example",
        "email_verified": true,
        "groups": ["admins"],
    })
}

fn with(changes: Value) -> Value {
    let mut claims = good_claims();
    for (k, v) in changes.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

fn without(claim: &str) -> Value {
    let mut claims = good_claims();
    claims.as_object_mut().unwrap().remove(claim);
    claims
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

// ---------------------------------------------------------------------------------------
// Controls

#[test]
fn control_correct_id_token_is_accepted() {
    let idp = Idp::new();
    idp.accepts(&idp.sign(&good_claims()));
    // `aud` as a one-element array and `azp` = our client id are as good.
    idp.accepts(&idp.sign(&with(json!({"aud": [CLIENT_ID], "azp": CLIENT_ID}))));
    // And the token really reads as the user.
    let user = user_from_verified_token(&idp.sign(&good_claims()), "groups", false).unwrap();
    assert_eq!(user.subject, "f3a2c1d0-alice");
    assert_eq!(user.groups, vec!["admins"]);
}

// ---------------------------------------------------------------------------------------
// nonce

#[test]
fn attack_id_token_wrong_nonce() {
    let idp = Idp::new();
    idp.refuses(
        &idp.sign(&with(json!({"nonce": "another-sign-in"}))),
        "Invalid nonce: nonce mismatch",
    );
    // The expected nonce is compared exactly, not as a prefix or case-insensitively.
    idp.refuses(
        &idp.sign(&with(json!({"nonce": NONCE.to_uppercase()}))),
        "Invalid nonce: nonce mismatch",
    );
    idp.refuses(
        &idp.sign(&with(json!({"nonce": ""}))),
        "Invalid nonce: nonce mismatch",
    );
}

#[test]
fn attack_id_token_missing_nonce() {
    let idp = Idp::new();
    idp.refuses(
        &idp.sign(&without("nonce")),
        "Invalid nonce: missing nonce claim",
    );
}

// ---------------------------------------------------------------------------------------
// aud / azp

#[test]
fn attack_id_token_wrong_aud() {
    let idp = Idp::new();
    idp.refuses(
        &idp.sign(&with(json!({"aud": "grafana"}))),
        "must contain `portcullis`",
    );
    idp.refuses(
        &idp.sign(&with(json!({"aud": ["grafana"]}))),
        "must contain `portcullis`",
    );
    idp.refuses(
        &idp.sign(&with(json!({"aud": []}))),
        "must contain `portcullis`",
    );
    // A near miss is not our client id.
    idp.refuses(
        &idp.sign(&with(json!({"aud": "portcullis2"}))),
        "must contain `portcullis`",
    );
}

#[test]
fn attack_id_token_missing_aud() {
    let idp = Idp::new();
    // `aud` is required by the claims type: the token does not even deserialize.
    assert!(idp.verify(&idp.sign(&without("aud"))).is_err());
}

/// OIDC Core 3.1.3.7: a token for several audiences without `azp` must not be accepted;
/// openidconnect also refuses every audience besides ours unless told to trust it.
#[test]
fn attack_id_token_multiple_aud_without_azp() {
    let idp = Idp::new();
    idp.refuses(
        &idp.sign(&with(json!({"aud": [CLIENT_ID, "grafana"]}))),
        "`grafana` is not a trusted audience",
    );
    idp.refuses(
        &idp.sign(&with(json!({"aud": ["grafana", CLIENT_ID]}))),
        "`grafana` is not a trusted audience",
    );
}

#[test]
fn attack_id_token_multiple_aud_with_azp_of_another_client() {
    let idp = Idp::new();
    idp.refuses(
        &idp.sign(&with(
            json!({"aud": [CLIENT_ID, "grafana"], "azp": "grafana"}),
        )),
        "`grafana` is not a trusted audience",
    );
}

/// A token issued to (obtained by) another client, naming us as its only audience.
/// openidconnect 4.1 does not check `azp` at all; `verify_id_token` does (OIDC Core
/// 3.1.3.7 step 5: if `azp` is present, it must be our client id).
#[test]
fn attack_id_token_azp_of_another_client() {
    let idp = Idp::new();
    idp.refuses(
        &idp.sign(&with(json!({"azp": "grafana"}))),
        "authorized party",
    );
    idp.refuses(
        &idp.sign(&with(json!({"aud": [CLIENT_ID], "azp": "grafana"}))),
        "authorized party",
    );
    idp.refuses(&idp.sign(&with(json!({"azp": ""}))), "authorized party");
}

// ---------------------------------------------------------------------------------------
// iss

#[test]
fn attack_id_token_wrong_iss() {
    let idp = Idp::new();
    for iss in [
        "https://evil.example/realms/corp",
        "https://idp.example/realms/other",
        "https://idp.example/realms/corp/",
        "http://idp.example/realms/corp",
    ] {
        idp.refuses(&idp.sign(&with(json!({ "iss": iss }))), "Invalid issuer");
    }
    // Missing or empty `iss`: the claims do not deserialize (not a URL).
    assert!(idp.verify(&idp.sign(&without("iss"))).is_err());
    assert!(idp.verify(&idp.sign(&with(json!({"iss": ""})))).is_err());
}

// ---------------------------------------------------------------------------------------
// exp / iat

#[test]
fn attack_id_token_expired() {
    let idp = Idp::new();
    let now = now();
    idp.refuses(
        &idp.sign(&with(json!({"exp": now - 3600, "iat": now - 7200}))),
        "ID token expired",
    );
    idp.refuses(
        &idp.sign(&with(json!({"exp": 0, "iat": 0}))),
        "ID token expired",
    );
    // Missing `exp`: the claims do not deserialize.
    assert!(idp.verify(&idp.sign(&without("exp"))).is_err());
}

/// openidconnect 4.1 does NOT check `iat`: its default `iat_verifier_fn` accepts any issue
/// time, and `OpenIdConnect::client_from` does not set one. A token the IdP signed with an `iat` ten years
/// ahead (and a valid `exp`) therefore verifies. No assertion on the outcome: this only
/// documents the behaviour and checks the call does not panic. The signature, `exp` and the
/// single-use `nonce` still bound such a token, so this is not treated as a weakness.
#[test]
fn attack_id_token_iat_far_in_future() {
    let idp = Idp::new();
    let future = now() + 10 * 365 * 24 * 3600;
    let _not_checked_by_the_crate = idp.verify(&idp.sign(&with(json!({ "iat": future }))));
}

// ---------------------------------------------------------------------------------------
// Signature and key selection

#[test]
fn attack_id_token_alg_none() {
    let idp = Idp::new();
    let payload = b64(&good_claims());
    for header in [
        json!({"alg": "none"}),
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "none", "kid": idp.kid()}),
        json!({"alg": "None"}),
        json!({"alg": "NONE"}),
    ] {
        let unsigned = format!("{}.{payload}.", b64(&header));
        assert!(idp.verify(&unsigned).is_err(), "{header}");
        // Nor with the real ES256 signature of some other token pasted on.
        let real_sig = idp
            .sign(&good_claims())
            .rsplit('.')
            .next()
            .unwrap()
            .to_string();
        let pasted = format!("{}.{payload}.{real_sig}", b64(&header));
        assert!(idp.verify(&pasted).is_err(), "{header}");
    }
    // The canonical case fails for its algorithm, by name, not for some side reason.
    idp.refuses(
        &format!("{}.{payload}.", b64(&json!({"alg": "none"}))),
        "ID token signed with \"none\", which is not accepted (accepted: ES256)",
    );
}

/// Every form of the IdP's public key an attacker could feed an HMAC with.
fn public_key_materials(keys: &SigningKeys) -> Vec<Vec<u8>> {
    let jwk = &keys.jwks().keys[0];
    let mut point = vec![0x04];
    point.extend(URL_SAFE_NO_PAD.decode(&jwk.x).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(&jwk.y).unwrap());
    let mut spki = vec![
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    spki.extend(&point);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    vec![
        serde_json::to_vec(jwk).unwrap(),
        serde_json::to_vec(keys.jwks()).unwrap(),
        point[1..].to_vec(),
        point,
        spki,
        pem.into_bytes(),
        jwk.x.clone().into_bytes(),
    ]
}

#[test]
fn attack_id_token_hs256_with_public_key_as_secret() {
    // With metadata as our IdP publishes it (ES256 only) the alg is refused outright...
    let idp = Idp::new();
    for secret in public_key_materials(&idp.keys) {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(idp.kid());
        let forged =
            jsonwebtoken::encode(&header, &good_claims(), &EncodingKey::from_secret(&secret))
                .unwrap();
        idp.refuses(
            &forged,
            "ID token signed with \"HS256\", which is not accepted",
        );
        let mut header = Header::new(Algorithm::HS256);
        header.kid = None;
        let forged =
            jsonwebtoken::encode(&header, &good_claims(), &EncodingKey::from_secret(&secret))
                .unwrap();
        idp.refuses(
            &forged,
            "ID token signed with \"HS256\", which is not accepted",
        );
    }
    // ...and even if the IdP advertised HS256, the HMAC key is our client secret, never a
    // key from the JWKS.
    let idp = Idp::with_algs(
        vec![
            CoreJwsSigningAlgorithm::EcdsaP256Sha256,
            CoreJwsSigningAlgorithm::HmacSha256,
        ],
        Some(&["ES256", "HS256"]),
    );
    for secret in public_key_materials(&idp.keys) {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(idp.kid());
        let forged =
            jsonwebtoken::encode(&header, &good_claims(), &EncodingKey::from_secret(&secret))
                .unwrap();
        idp.refuses(&forged, "bad HMAC");
    }
    // Control for that configuration: a correct ES256 token still passes.
    idp.accepts(&idp.sign(&good_claims()));
}

#[test]
fn attack_id_token_other_key_same_kid() {
    let idp = Idp::new();
    let attacker = SigningKeys::from_pem(&generate_pkcs8_pem()).unwrap();
    idp.refuses(
        &es256(&good_claims(), &idp.kid(), attacker.encoding_key()),
        "EC Signature was wrong",
    );
    // Without a kid, the IdP's only key is used, and it still does not match.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = None;
    let no_kid = jsonwebtoken::encode(&header, &good_claims(), attacker.encoding_key()).unwrap();
    idp.refuses(&no_kid, "EC Signature was wrong");
}

#[test]
fn attack_id_token_unknown_kid() {
    let idp = Idp::new();
    let attacker = SigningKeys::from_pem(&generate_pkcs8_pem()).unwrap();
    // The attacker's own key under its own kid: not in the IdP's JWKS.
    idp.refuses(
        &es256(&good_claims(), attacker.kid(), attacker.encoding_key()),
        "No matching key found",
    );
    // Even a valid IdP signature is refused under a kid the JWKS does not hold.
    idp.refuses(
        &es256(&good_claims(), "no-such-key", idp.keys.encoding_key()),
        "No matching key found",
    );
}

#[test]
fn attack_id_token_tampered_payload() {
    let idp = Idp::new();
    let token = idp.sign(&good_claims());
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(&with(json!({"sub": "root", "groups": ["admins", "root"]}))),
        parts[2]
    );
    idp.refuses(&forged, "EC Signature was wrong");
}

// ---------------------------------------------------------------------------------------
// Malformed input: always Err, never a panic

#[test]
fn attack_id_token_malformed() {
    let idp = Idp::new();
    let good = idp.sign(&good_claims());
    let parts: Vec<&str> = good.split('.').collect();
    let two_parts = format!("{}.{}", parts[0], parts[1]);
    match idp.verify(&two_parts) {
        Err(OidcError::IdToken(msg)) => assert!(msg.contains("found 2 parts"), "{msg}"),
        other => panic!("two parts: {other:?}"),
    }
    let four_parts = format!("{good}.{}", parts[2]);
    let long = "a".repeat(1 << 20);
    let huge = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(&long),
        parts[2]
    );
    let inputs: Vec<String> = vec![
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        "garbage".into(),
        "not.a.jwt".into(),
        "\u{0}\u{1}\u{fffd}".into(),
        "é.é.é".into(),
        format!("{}.{}.!!!", parts[0], parts[1]),
        format!("!!!.{}.{}", parts[1], parts[2]),
        format!("{}.!!!.{}", parts[0], parts[2]),
        format!("{}.{}.{}", b64(&json!([1, 2])), parts[1], parts[2]),
        format!("{}.{}.{}", b64(&json!("ES256")), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], b64(&json!([good_claims()])), parts[2]),
        format!("{}.{}.{}", parts[0], b64(&json!(null)), parts[2]),
        format!("{}.{}.", parts[0], parts[1]),
        format!(" {good}"),
        format!("{good}\n"),
        four_parts,
        huge,
        two_parts,
    ];
    for input in &inputs {
        assert!(
            idp.verify(input).is_err(),
            "accepted {:?}",
            &input[..input.len().min(80)]
        );
    }
    // Deeply nested JSON in the payload: refused, without overflowing the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let nested = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(deep), parts[2]);
    assert!(idp.verify(&nested).is_err());
}

// ---------------------------------------------------------------------------------------
// Reading the (already verified) payload

fn unsigned(payload: &str) -> String {
    format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(payload))
}

#[test]
fn attack_user_from_verified_token_odd_payloads() {
    // Not an object: no user.
    for payload in [
        "[]",
        "[{\"sub\":\"alice\"}]",
        "\"alice\"",
        "42",
        "null",
        "true",
        "",
        "{",
        "{\"sub\":\"alice\"",
        "\u{feff}{\"sub\":\"alice\"}",
    ] {
        assert!(
            user_from_verified_token(&unsigned(payload), "groups", true).is_none(),
            "{payload:?}"
        );
    }
    // A `sub` that is not a string: no user (never a stringified number or object).
    for sub in [
        json!(1),
        json!(null),
        json!(["alice"]),
        json!({"id": "alice"}),
    ] {
        let t = unsigned(&json!({ "sub": sub }).to_string());
        assert!(
            user_from_verified_token(&t, "groups", true).is_none(),
            "{sub}"
        );
    }
    // Not base64, invalid UTF-8, missing parts.
    assert!(user_from_verified_token("", "groups", false).is_none());
    assert!(user_from_verified_token("e30", "groups", false).is_none());
    assert!(user_from_verified_token("e30.!!!.sig", "groups", false).is_none());
    let invalid_utf8 = format!(
        "e30.{}.sig",
        URL_SAFE_NO_PAD.encode([0xff, 0xfe, b'{', b'}'])
    );
    assert!(user_from_verified_token(&invalid_utf8, "groups", false).is_none());
    // Deep nesting: serde_json's recursion limit refuses it instead of overflowing the stack.
    let deep = format!(
        "{{\"sub\":\"a\",\"x\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(user_from_verified_token(&unsigned(&deep), "groups", false).is_none());

    // Non-string group entries are dropped, never stringified.
    let t = unsigned(
        &json!({"sub": "alice", "groups": ["ops", 1, null, true, ["admins"], {"name": "admins"}, "dev"]})
            .to_string(),
    );
    let u = user_from_verified_token(&t, "groups", false).unwrap();
    assert_eq!(u.groups, vec!["ops", "dev"]);

    // A groups claim of another type: no groups.
    for groups in [json!(1), json!(null), json!(true), json!({"admins": true})] {
        let t = unsigned(&json!({"sub": "alice", "groups": groups}).to_string());
        let u = user_from_verified_token(&t, "groups", false).unwrap();
        assert!(u.groups.is_empty(), "{groups}");
    }

    // A huge groups array: read in full, no panic.
    let many: Vec<String> = (0..100_000).map(|i| format!("g{i}")).collect();
    let t = unsigned(&json!({"sub": "alice", "groups": many}).to_string());
    let u = user_from_verified_token(&t, "groups", false).unwrap();
    assert_eq!(u.groups.len(), 100_000);
    assert_eq!(u.groups[99_999], "g99999");

    // Other claims of the wrong type are absent, not coerced.
    let t = unsigned(
        &json!({"sub": "alice", "email": 5, "name": ["A"], "preferred_username": {"u": 1}, "email_verified": "true"})
            .to_string(),
    );
    let u = user_from_verified_token(&t, "groups", true).unwrap();
    assert_eq!(u.email, None);
    assert_eq!(u.name, None);
    assert_eq!(u.preferred_username, None);
    assert!(!u.email_verified);

    // An empty or odd groups claim name does not panic.
    for name in ["", ".", "groups.0", "\u{0}"] {
        let t = unsigned(&json!({"sub": "alice", "groups": ["a"]}).to_string());
        assert!(
            user_from_verified_token(&t, name, false)
                .unwrap()
                .groups
                .is_empty()
        );
    }
}
