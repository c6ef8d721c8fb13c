//! JWS from the IdP that openidconnect does not verify itself: Back-Channel Logout tokens
//! (OpenID Connect Back-Channel Logout 1.0) and signed UserInfo answers.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use openidconnect::core::CoreJwsSigningAlgorithm;

use super::claims::Claims;
use crate::secret::SecretString;

/// The event a logout token carries (Back-Channel Logout 1.0, section 2.4).
const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How old a logout token may be.
const MAX_AGE_SECS: u64 = 600;
/// Clock skew tolerated.
const LEEWAY_SECS: u64 = 60;

/// A validated logout token: end the sessions of this `sid`, or of this `sub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutToken {
    pub sub: Option<String>,
    pub sid: Option<String>,
    /// For replay protection by the caller.
    pub jti: String,
    pub iat: u64,
}

impl LogoutToken {
    /// The checks of section 2.6 that follow the signature, `iss` and `aud`: `iat` recent,
    /// `jti` present, the back-channel logout event, `sub` and/or `sid`, and no `nonce`
    /// (which would make an ID token pass for a logout token).
    pub fn from_claims(claims: &Claims, now: u64) -> Result<Self, String> {
        let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let iat = claims.get("iat").and_then(|v| v.as_u64()).ok_or("no iat")?;
        if iat > now + LEEWAY_SECS || iat + MAX_AGE_SECS < now {
            return Err(format!("iat {iat} is not recent"));
        }
        let jti = text("jti").ok_or("no jti")?;
        let event = claims
            .get("events")
            .and_then(|e| e.as_object())
            .and_then(|e| e.get(BACKCHANNEL_LOGOUT_EVENT));
        if !event.is_some_and(|e| e.is_object()) {
            return Err("no back-channel logout event".into());
        }
        if claims.contains_key("nonce") {
            return Err("a logout token has no nonce".into());
        }
        let (sub, sid) = (text("sub"), text("sid"));
        if sub.is_none() && sid.is_none() {
            return Err("neither sub nor sid".into());
        }
        Ok(Self { sub, sid, jti, iat })
    }
}

fn to_jsonwebtoken(alg: &CoreJwsSigningAlgorithm) -> Option<Algorithm> {
    use CoreJwsSigningAlgorithm as A;
    Some(match alg {
        A::RsaSsaPkcs1V15Sha256 => Algorithm::RS256,
        A::RsaSsaPkcs1V15Sha384 => Algorithm::RS384,
        A::RsaSsaPkcs1V15Sha512 => Algorithm::RS512,
        A::RsaSsaPssSha256 => Algorithm::PS256,
        A::RsaSsaPssSha384 => Algorithm::PS384,
        A::RsaSsaPssSha512 => Algorithm::PS512,
        A::EcdsaP256Sha256 => Algorithm::ES256,
        A::EcdsaP384Sha384 => Algorithm::ES384,
        A::EdDsa => Algorithm::EdDSA,
        A::HmacSha256 => Algorithm::HS256,
        A::HmacSha384 => Algorithm::HS384,
        A::HmacSha512 => Algorithm::HS512,
        _ => return None,
    })
}

/// Verifies `token`: its algorithm among `allowed`, its signature by the IdP key its `kid`
/// names (or its only key of that type; HS* with the client secret), `iss` and `aud`, and
/// `exp` when present (required when `require_exp`), `nbf` when present. Returns the claims.
pub fn verify_jws(
    token: &str,
    allowed: &[CoreJwsSigningAlgorithm],
    keys: &[Jwk],
    client_secret: Option<&SecretString>,
    issuer: &str,
    audiences: &[&str],
    require_exp: bool,
) -> Result<Claims, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed: {e}"))?;
    let alg = header.alg;
    if !allowed.iter().filter_map(to_jsonwebtoken).any(|a| a == alg) {
        return Err(format!("algorithm {alg:?} is not accepted"));
    }
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let secret = client_secret.ok_or("HS* needs the client secret")?;
            DecodingKey::from_secret(secret.expose().as_bytes())
        }
        _ => {
            let family = |k: &&Jwk| {
                use jsonwebtoken::jwk::AlgorithmParameters as P;
                matches!(
                    (&k.algorithm, alg),
                    (
                        P::RSA(_),
                        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512
                    ) | (
                        P::RSA(_),
                        Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512
                    ) | (P::EllipticCurve(_), Algorithm::ES256 | Algorithm::ES384)
                        | (P::OctetKeyPair(_), Algorithm::EdDSA)
                )
            };
            let candidates: Vec<&Jwk> = keys.iter().filter(family).collect();
            let jwk = match &header.kid {
                Some(kid) => candidates
                    .into_iter()
                    .find(|k| k.common.key_id.as_deref() == Some(kid.as_str()))
                    .ok_or_else(|| format!("no IdP key with kid {kid:?}"))?,
                None => match candidates.as_slice() {
                    [only] => *only,
                    _ => return Err("no kid, and not exactly one IdP key of its type".into()),
                },
            };
            DecodingKey::from_jwk(jwk).map_err(|e| format!("IdP key unusable: {e}"))?
        }
    };
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(audiences);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    let required: &[&str] = if require_exp {
        &["iss", "aud", "exp"]
    } else {
        &["iss", "aud"]
    };
    validation.set_required_spec_claims(required);
    jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::identity::{SigningKeys, generate_pkcs8_pem};

    const NOW: u64 = 1_800_000_000;
    const ISS: &str = "https://idp.example";

    fn idp() -> (SigningKeys, Vec<Jwk>) {
        let keys = SigningKeys::from_pem(&generate_pkcs8_pem()).unwrap();
        let jwk =
            serde_json::from_value(serde_json::to_value(&keys.jwks().keys[0]).unwrap()).unwrap();
        (keys, vec![jwk])
    }

    fn good() -> serde_json::Value {
        json!({
            "iss": ISS, "aud": "portcullis", "iat": NOW, "jti": "j1", "sid": "s1",
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        })
    }

    fn sign(keys: &SigningKeys, claims: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(keys.kid().to_string());
        h.typ = Some("logout+jwt".into());
        jsonwebtoken::encode(&h, claims, keys.encoding_key()).unwrap()
    }

    fn check(token: &str, keys: &[Jwk]) -> Result<LogoutToken, String> {
        let claims = verify_jws(
            token,
            &[CoreJwsSigningAlgorithm::EcdsaP256Sha256],
            keys,
            None,
            ISS,
            &["portcullis"],
            false,
        )?;
        LogoutToken::from_claims(&claims, NOW)
    }

    #[test]
    fn a_logout_token_names_the_session_to_end() {
        let (keys, jwks) = idp();
        let t = check(&sign(&keys, &good()), &jwks).unwrap();
        assert_eq!(
            (t.sid.as_deref(), t.sub, t.jti.as_str()),
            (Some("s1"), None, "j1")
        );
    }

    #[test]
    fn attack_logout_tokens_that_must_be_refused() {
        let (keys, jwks) = idp();
        let mut cases: Vec<(&str, String)> = Vec::new();
        let with = |k: &str, v: serde_json::Value| {
            let mut c = good();
            c[k] = v;
            c
        };
        let without = |k: &str| {
            let mut c = good();
            c.as_object_mut().unwrap().remove(k);
            c
        };
        cases.push((
            "wrong iss",
            sign(&keys, &with("iss", json!("https://evil.example"))),
        ));
        cases.push((
            "wrong aud",
            sign(&keys, &with("aud", json!("other-client"))),
        ));
        cases.push(("no aud", sign(&keys, &without("aud"))));
        cases.push(("old", sign(&keys, &with("iat", json!(NOW - 3600)))));
        cases.push(("future", sign(&keys, &with("iat", json!(NOW + 3600)))));
        cases.push(("no jti", sign(&keys, &without("jti"))));
        cases.push(("no event", sign(&keys, &without("events"))));
        cases.push((
            "wrong event",
            sign(&keys, &with("events", json!({"x": {}}))),
        ));
        cases.push((
            "event not an object",
            sign(
                &keys,
                &with("events", json!({BACKCHANNEL_LOGOUT_EVENT: "yes"})),
            ),
        ));
        cases.push((
            "an ID token (nonce)",
            sign(&keys, &with("nonce", json!("n"))),
        ));
        cases.push(("no sub nor sid", sign(&keys, &without("sid"))));
        // jsonwebtoken checks `exp` against the real clock.
        let an_hour_ago = crate::core::unix_now() - 3600;
        cases.push(("expired", sign(&keys, &with("exp", json!(an_hour_ago)))));
        let stranger = SigningKeys::from_pem(&generate_pkcs8_pem()).unwrap();
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(keys.kid().to_string());
        cases.push((
            "another key under the IdP's kid",
            jsonwebtoken::encode(&h, &good(), stranger.encoding_key()).unwrap(),
        ));
        cases.push((
            "HS256 keyed with the IdP's public key",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &good(),
                &EncodingKey::from_secret(jwks_x(&keys).as_bytes()),
            )
            .unwrap(),
        ));
        cases.push((
            "alg none",
            format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&good())),
        ));
        cases.push(("garbage", "a.b.c".into()));
        for (what, token) in cases {
            assert!(check(&token, &jwks).is_err(), "{what} was accepted");
        }
    }

    fn jwks_x(keys: &SigningKeys) -> String {
        keys.jwks().keys[0].x.clone()
    }

    fn b64(v: &serde_json::Value) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }
}
