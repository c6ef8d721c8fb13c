//! The identity JWT: ES256, `kid` in the header, short-lived, cached per (session, route).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};

use super::{SigningKeys, User};

/// Lifetime of an identity JWT.
pub const TOKEN_TTL_SECS: u64 = 300;
/// A cached token is re-signed once it has less than this left, so an upstream never
/// receives a token about to expire (verifiers allow ~60 s of skew).
const REMINT_BEFORE_EXP_SECS: u64 = 60;

/// The claims of the identity JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
    /// Always a list, never null: verifiers that map groups to roles choke on null.
    pub groups: Vec<String>,
    /// Only on routes with a role mapping (Grafana's `role_attribute_path: role`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub sid: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

/// Signs identity JWTs with the configured key.
pub struct TokenMinter {
    issuer: String,
    keys: Arc<SigningKeys>,
    header: Header,
}

impl TokenMinter {
    pub fn new(issuer: String, keys: Arc<SigningKeys>) -> Self {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(keys.kid().to_string());
        header.typ = Some("JWT".into());
        Self {
            issuer,
            keys,
            header,
        }
    }

    pub fn keys(&self) -> &SigningKeys {
        &self.keys
    }

    /// Mints a token for `user` on the route whose authority is `audience`.
    pub fn mint(
        &self,
        user: &User,
        public_sid: &str,
        audience: &str,
        role: Option<&str>,
        now: u64,
    ) -> (String, u64) {
        let exp = now + TOKEN_TTL_SECS;
        let claims = IdentityClaims {
            iss: self.issuer.clone(),
            aud: audience.to_string(),
            sub: user.subject.clone(),
            email: user.verified_email().map(str::to_string),
            name: user.name.clone(),
            preferred_username: user.preferred_username.clone(),
            groups: user.groups.clone(),
            role: role.map(str::to_string),
            sid: public_sid.to_string(),
            iat: now,
            exp,
            jti: crate::crypto::random_token(12),
        };
        let token = jsonwebtoken::encode(&self.header, &claims, self.keys.encoding_key())
            .expect("ES256 signing with a validated key does not fail");
        (token, exp)
    }
}

/// Signed tokens by (session, route), so the hot path signs at most once per ~4 minutes.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<CacheKey, (Arc<str>, u64)>>,
}

/// (session id, route index).
type CacheKey = (String, usize);

/// Above this many entries an insert first drops the expired ones.
const PRUNE_ABOVE: usize = 4096;

impl TokenCache {
    /// The cached token for (`sid`, `route`) if it has more than a minute left, else `mint()`'s.
    pub fn get_or_mint(
        &self,
        sid: &str,
        route: usize,
        now: u64,
        mint: impl FnOnce() -> (String, u64),
    ) -> Arc<str> {
        let key = (sid.to_string(), route);
        {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((token, exp)) = entries.get(&key)
                && *exp > now + REMINT_BEFORE_EXP_SECS
            {
                return token.clone();
            }
        }
        // Sign outside the lock: two racing requests may both sign, which is harmless.
        let (token, exp) = mint();
        let token: Arc<str> = token.into();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > PRUNE_ABOVE {
            entries.retain(|_, (_, exp)| *exp > now);
        }
        entries.insert(key, (token.clone(), exp));
        token
    }

    /// Drops every token of a session (sign-out).
    pub fn forget_session(&self, sid: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(s, _), _| s != sid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::generate_pkcs8_pem;
    use jsonwebtoken::{DecodingKey, Validation};

    fn alice() -> User {
        User {
            subject: "alice".into(),
            email: Some("alice@example.com".into()),
            email_verified: Some(true),
            name: Some("Alice".into()),
            preferred_username: Some("alice".into()),
            groups: vec![],
        }
    }

    #[test]
    fn token_verifies_with_the_published_key() {
        let keys = Arc::new(SigningKeys::from_pem(&generate_pkcs8_pem()).unwrap());
        let minter = TokenMinter::new("https://auth.example".into(), keys.clone());
        let now = jsonwebtoken::get_current_timestamp();
        let (token, exp) = minter.mint(&alice(), "sid1", "app.example", None, now);
        assert_eq!(exp - now, TOKEN_TTL_SECS);
        let jwk = &keys.jwks().keys[0];
        let key = DecodingKey::from_ec_components(&jwk.x, &jwk.y).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["app.example"]);
        v.set_issuer(&["https://auth.example"]);
        let data = jsonwebtoken::decode::<IdentityClaims>(&token, &key, &v).unwrap();
        assert_eq!(data.header.kid.as_deref(), Some(keys.kid()));
        assert_eq!(data.claims.groups, Vec::<String>::new());
        assert_eq!(data.claims.email.as_deref(), Some("alice@example.com"));
        assert!(token.contains('.'));
        let payload = token.split('.').nth(1).unwrap();
        let raw = String::from_utf8(
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap(),
        )
        .unwrap();
        assert!(
            raw.contains(r#""groups":[]"#),
            "groups must be a list, got {raw}"
        );
    }

    #[test]
    fn cache_reuses_until_a_minute_before_expiry() {
        let cache = TokenCache::default();
        let mut mints = 0;
        let mut get = |now: u64| {
            cache.get_or_mint("s", 0, now, || {
                mints += 1;
                (format!("t{mints}"), now + TOKEN_TTL_SECS)
            })
        };
        assert_eq!(&*get(1000), "t1");
        assert_eq!(&*get(1000 + 239), "t1");
        assert_eq!(&*get(1000 + 241), "t2");
        assert_eq!(&*get(1000 + 300), "t2");
        assert_eq!(mints, 2);
        cache.forget_session("s");
        assert!(cache.entries.lock().unwrap().is_empty());
    }
}
